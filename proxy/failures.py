"""The closed set of upstream failure classes, and the one place transport errors are mapped.

The router decides retry, failover or return-to-client from the class alone, never from a
provider's name or message text. Adapters read an upstream's text only where its codes say
nothing more, and then with the shared rules here (`mentions`, `refusal`, `from_text`).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import quote

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
# A run of this many of a key's first characters, or more, is cut out of a message: a text cut
# short may hold most of a key, and leave its end out of a whole-key match.
KEY_HEAD = 6

# A refused credential is Switchyard's trouble, not the client's: the next route (another
# host, or another key of the same one) serves the request, and the refused one rests.
RETRYABLE: frozenset[Kind] = frozenset(
    {Kind.RATE_LIMITED, Kind.OVERLOADED, Kind.TIMEOUT, Kind.UPSTREAM_BROKEN, Kind.AUTH}
)

# Words by which a host says it cannot serve now: its own trouble, never a refusal of the
# prompt, whatever else the text names ("Safety checker unavailable, please retry").
OUTAGE_MARKERS = ("unavailable", "overloaded", "temporarily", "maintenance", "busy")
# A snake_case word in an error text names a parameter (`enable_safety_checker`).
_PARAMETER = re.compile(r"\w*_\w*")


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified upstream failure. `message` is safe to show a client: no secrets, no URLs."""

    kind: Kind
    message: str
    retry_after_s: float | None = None
    status: int | None = None
    # One upstream call's failure that many requests share (a batch job's create): the
    # route's health counts it once, whoever reports it (routing/health.py).
    shared: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def without(self, secret: str) -> Failure:
        """This failure with `secret` cut out of its message: a host may quote a key back, and
        a text cut short may hold the key's first characters, at its end ("…") or anywhere
        (a code added after the cut)."""
        if len(secret) < 4:
            return self
        spellings = tuple(dict.fromkeys((quote(secret, safe=""), secret)))  # URL-encoded too
        message = self.message
        for spelling in spellings:  # whole first: a head cut out would break a whole match
            message = message.replace(spelling, "[key]")
        message = _heads_out(message, spellings)
        if message.endswith("…"):
            head = message[:-1]
            cut = next((n for n in range(len(secret) - 1, 3, -1) if head.endswith(secret[:n])), 0)
            message = f"{head[:len(head) - cut]}[key]…" if cut else message
        return self if message == self.message else replace(self, message=message)


def _heads_out(message: str, spellings: tuple[str, ...]) -> str:
    """`message` with every run of KEY_HEAD or more of a spelling's first characters replaced,
    the longest run any spelling matches at each place (a raw key's run stops where its
    URL-encoded spelling goes on, and the other way round)."""
    probes = {spelling[:KEY_HEAD] for spelling in spellings if len(spelling) >= KEY_HEAD}
    out, pos = [], 0
    while found := [at for at in (message.find(p, pos) for p in probes) if at >= 0]:
        at = min(found)
        end = max(_run(message, at, spelling) for spelling in spellings)
        out += [message[pos:at], "[key]"]
        pos = end
    return "".join([*out, message[pos:]])


def _run(message: str, at: int, spelling: str) -> int:
    """Where the run of `spelling`'s first characters that starts at `at` ends (`at`: none
    of KEY_HEAD)."""
    end = at
    while end < len(message) and end - at < len(spelling) and message[end] == spelling[end - at]:
        end += 1
    return end if end - at >= KEY_HEAD else at


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


def mentions(text: str, markers: Iterable[str]) -> bool:
    """Whether an upstream's text names one of the markers, in any case. A plain word counts in
    the prose only, not inside a parameter's name (`safety_tolerance must be...` is about a
    field); a marker with an underscore names a code (`content_policy`) and counts anywhere."""
    lowered = text.lower()
    prose = _PARAMETER.sub(" ", lowered)
    return any(m.lower() in (lowered if "_" in m else prose) for m in markers if m)


def refusal(text: str, markers: Iterable[str]) -> bool:
    """Whether an error text reads as a content refusal: it names a content marker and no
    outage ("safety checker unavailable" is the host's trouble, not the prompt's)."""
    return mentions(text, markers) and not mentions(text, OUTAGE_MARKERS)


def from_text(text: str, markers: Iterable[str]) -> Kind | None:
    """The class an error text alone gives, for a failure no code or status classifies: an
    outage is OVERLOADED, a refusal CONTENT_BLOCKED; None for anything else."""
    if mentions(text, OUTAGE_MARKERS):
        return Kind.OVERLOADED
    return Kind.CONTENT_BLOCKED if mentions(text, markers) else None


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
