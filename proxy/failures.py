"""The closed set of upstream failure classes, and the one place transport errors are mapped.

The router decides retry, failover or return-to-client from the class alone, never from a
provider's name or message text.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import httpx


class Kind(StrEnum):
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    CONTENT_BLOCKED = "content_blocked"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    UPSTREAM_BROKEN = "upstream_broken"


# An upstream's Retry-After beyond this is read as "not soon": one hour.
MAX_RETRY_AFTER_S = 3600.0

RETRYABLE: frozenset[Kind] = frozenset(
    {Kind.RATE_LIMITED, Kind.OVERLOADED, Kind.TIMEOUT, Kind.UPSTREAM_BROKEN}
)


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified upstream failure. `message` is safe to show a client: no secrets, no URLs."""

    kind: Kind
    message: str
    retry_after_s: float | None = None
    status: int | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class UpstreamError(Exception):
    """Raised by the flows when a route failed; carries the classified failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.message}")
        self.failure = failure


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds from a Retry-After (seconds or HTTP date) or retry-after-ms header, if any."""
    if ms := headers.get("retry-after-ms"):
        with contextlib.suppress(ValueError):
            return _bounded(float(ms) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return _bounded(float(value))
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return _bounded(when - (time.time() if now is None else now))


def _bounded(seconds: float) -> float | None:
    """Clamp a hint to [0, MAX_RETRY_AFTER_S]; NaN is no hint at all."""
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def from_status(status: int, headers: httpx.Headers) -> Failure:
    """The default class of an HTTP error status, for protocols with nothing more specific."""
    after = retry_after(headers)
    if status == 429:
        return Failure(Kind.RATE_LIMITED, "upstream rate limit", after, status)
    if status in (401, 403):
        return Failure(Kind.AUTH, "upstream rejected Switchyard's credentials", None, status)
    if status in (408, 504):
        return Failure(Kind.TIMEOUT, "upstream timed out", after, status)
    if status in (502, 503, 529):
        return Failure(Kind.OVERLOADED, "upstream overloaded or unavailable", after, status)
    if 400 <= status < 500:
        return Failure(Kind.BAD_REQUEST, "upstream rejected the request", None, status)
    return Failure(Kind.UPSTREAM_BROKEN, f"upstream error (HTTP {status})", after, status)


def from_transport(exc: httpx.TransportError) -> Failure:
    """Map an httpx transport exception to its failure class.

    A connect error means the request never left, so it is safe to retry anywhere; a read
    timeout may mean the upstream accepted the job, which the flows must treat with care.
    """
    if isinstance(exc, httpx.TimeoutException):
        return Failure(Kind.TIMEOUT, f"upstream {type(exc).__name__}")
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        return Failure(Kind.OVERLOADED, "could not connect to upstream")
    return Failure(Kind.UPSTREAM_BROKEN, f"upstream transport error ({type(exc).__name__})")
