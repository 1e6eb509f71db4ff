"""Per-key rate limits: requests and images per sliding minute, and requests in flight.

Answered as OpenAI answers: 429 `rate_limit_exceeded` with Retry-After, and the
x-ratelimit-limit-* / remaining-* / reset-* headers (for requests and for images) on every
response of a limited key. Counts live in this process; in fleet mode proxy/state keeps them in
Redis for every replica, with the same checks and headers (`check`, `headers`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.billing.keys import KeyRecord

if TYPE_CHECKING:
    from proxy.routing.slots import Slot

WINDOW_S = 60.0
# Events this close together are kept as one entry (first, last, total), each entry leaving
# the window with its last event: at most WINDOW_S / MERGE_S entries per window whatever the
# rate (a minute at 1000 requests a second was 60,000), and a limit errs only on the strict
# side, by at most MERGE_S.
MERGE_S = 0.1


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: its rate-limit headers, and what `done` gives back."""

    key: KeyRecord
    headers: dict[str, str]
    fleet: bool = False  # counted in Redis (else by this process)
    lease: str | None = None  # the fleet's lease of the key's concurrency, if it has one
    slot: Slot | None = None  # the request's first host slot, taken in the same round trip


class Limited(Exception):
    """A limit the request would exceed; `headers` carry the figures and Retry-After."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


@dataclass
class _Window:
    events: deque[tuple[float, float, int]] = field(default_factory=deque)  # first, last, n
    total: int = 0

    def add(self, now: float, amount: int) -> None:
        if self.events and now - self.events[-1][0] < MERGE_S:
            first, _, merged = self.events[-1]
            self.events[-1] = (first, now, merged + amount)
        else:
            self.events.append((now, now, amount))
        self.total += amount

    def trim(self, now: float) -> None:
        while self.events and self.events[0][1] <= now - WINDOW_S:
            self.total -= self.events.popleft()[2]

    def reset_s(self, now: float) -> float:
        return self.events[0][1] + WINDOW_S - now if self.events else 0.0


@dataclass
class _KeyState:
    requests: _Window = field(default_factory=_Window)
    images: _Window = field(default_factory=_Window)
    in_flight: int = 0


class Limits:
    """The in-process implementation (proxy/state wraps it; Redis's mirrors it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def admit(self, key: KeyRecord, images: int) -> dict[str, str]:
        """Count a request of `images` images against the key, or raise Limited. Returns the
        rate-limit headers for the response; call `done` when the request ends."""
        state = self._keys.setdefault(key.id, _KeyState())
        now = self._clock()
        state.requests.trim(now)
        state.images.trim(now)
        check(key, _figures(state, now), images, state.in_flight)
        state.requests.add(now, 1)
        state.images.add(now, images)  # kept without a limit too: one set later counts them
        state.in_flight += 1
        return headers(key, _figures(state, now))

    def done(self, key: KeyRecord) -> None:
        state = self._keys.get(key.id)
        if state is not None:
            state.in_flight -= 1

    def in_flight(self, key: KeyRecord) -> int:
        state = self._keys.get(key.id)
        return state.in_flight if state is not None else 0


@dataclass(frozen=True, slots=True)
class Figures:
    """A key's windows at one moment: used this minute, and seconds until they next shrink."""

    requests: int
    images: int
    requests_reset_s: float
    images_reset_s: float


def _figures(state: _KeyState, now: float) -> Figures:
    return Figures(state.requests.total, state.images.total, state.requests.reset_s(now),
                   state.images.reset_s(now))


def check(key: KeyRecord, used: Figures, images: int, in_flight: int) -> None:
    """Raise Limited if a request of `images` images does not fit the key's limits now."""
    limits = key.limits
    checks = (("requests", limits.rpm, used.requests, used.requests_reset_s, 1),
              ("images", limits.ipm, used.images, used.images_reset_s, images))
    for name, limit, total, reset_s, amount in checks:
        if limit is not None and total + amount > limit:
            wait = reset_s if amount <= limit else WINDOW_S
            raise Limited(f"Rate limit reached for {name} per minute on this key: limit "
                          f"{limit}, used {total}, requested {amount}. Try again in "
                          f"{_duration(wait)}.",
                          {**headers(key, used), "retry-after": str(max(1, round(wait + 0.5)))})
    if limits.concurrency is not None and in_flight >= limits.concurrency:
        raise Limited(f"This key allows {limits.concurrency} requests at once; wait for one "
                      f"to finish.", {**headers(key, used), "retry-after": "1"})


def headers(key: KeyRecord, used: Figures) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits the key has."""
    found = {}
    for name, limit, total, reset_s in (
            ("requests", key.limits.rpm, used.requests, used.requests_reset_s),
            ("images", key.limits.ipm, used.images, used.images_reset_s)):
        if limit is not None:
            found[f"x-ratelimit-limit-{name}"] = str(limit)
            found[f"x-ratelimit-remaining-{name}"] = str(max(0, limit - total))
            found[f"x-ratelimit-reset-{name}"] = _duration(reset_s)
    return found


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '250ms', '12s', '1m2s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
