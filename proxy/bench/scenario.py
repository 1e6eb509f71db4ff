"""The routing benchmark's market: backends whose condition changes over the run, and the dice.

Everything here is pure. A backend's true state at time t and one pre-drawn set of dice per
(request, backend) decide how a call started at t ends (`answer`), so the simulated upstream
that the router calls and the oracles that never run the router see exactly the same market.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

# A backend that is down refuses fast, the way a load balancer with no healthy pods does.
DOWN_REPLY_S = 0.2
# A 429 comes back before any work starts.
LIMITED_REPLY_S = 0.3
# The suggested scenario is laid out over an hour; other durations scale its events.
REFERENCE_DURATION_S = 3600.0

EventKind = Literal["down", "slow", "rate_limited", "hang"]


@dataclass(frozen=True, slots=True)
class Event:
    """A change in a backend's condition over [start_s, end_s): down (fast 503s); slow
    (latency times `factor`); rate_limited (`factor` of calls answered 429 with Retry-After);
    hang (calls started during it never answer: the client's read timeout or a cancel ends
    them, which is how a wedged host looks from outside)."""

    kind: EventKind
    start_s: float
    end_s: float
    factor: float = 1.0
    retry_after_s: float = 5.0

    def covers(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class State:
    """A backend's true condition at one instant."""

    down: bool
    median_s: float
    error_rate: float
    limited_share: float
    retry_after_s: float
    hung: bool = False

    @property
    def up(self) -> bool:
        """Calls started now can be answered (a hung host is as useless as a down one)."""
        return not (self.down or self.hung)


@dataclass(frozen=True, slots=True)
class Backend:
    """One simulated host: its price, latency (log-normal), base error rate and events."""

    name: str
    price: Decimal  # USD per image
    median_s: float
    sigma: float  # of log latency
    error_rate: float = 0.0  # HTTP 500 after the work's latency
    events: tuple[Event, ...] = ()
    # The operator's keys for it (a key pool, proxy/key_pools.py), and the calls each key
    # may start per second: past it, a 429 with Retry-After 1 s (None: no such limit).
    keys: int = 1
    key_rps: float | None = None

    def state(self, t: float) -> State:
        live = [e for e in self.events if e.covers(t)]
        slow = math.prod(e.factor for e in live if e.kind == "slow")
        limits = [e for e in live if e.kind == "rate_limited"]
        return State(down=any(e.kind == "down" for e in live), median_s=self.median_s * slow,
                     error_rate=self.error_rate,
                     limited_share=max((e.factor for e in limits), default=0.0),
                     retry_after_s=max((e.retry_after_s for e in limits), default=0.0),
                     hung=any(e.kind == "hang" for e in live))


@dataclass(frozen=True, slots=True)
class Dice:
    """One (request, backend) pair's draws, made before the run."""

    z: float  # standard normal: where in the latency distribution this call falls
    error: float  # uniform: below the error rate, the call fails
    limit: float  # uniform: below the 429 share, the call is rate limited


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ends: its HTTP status after `seconds`."""

    status: int
    seconds: float
    retry_after_s: float | None = None


# A call to a hung backend: no reply, ever (no status is sent; the number is never read).
HUNG = Outcome(0, math.inf)


def answer(backend: Backend, state: State, dice: Dice) -> Outcome:
    """The reply to a call started while the backend was in `state`."""
    if state.down:
        return Outcome(503, DOWN_REPLY_S)
    if state.hung:
        return HUNG
    if dice.limit < state.limited_share:
        return Outcome(429, LIMITED_REPLY_S, state.retry_after_s)
    seconds = state.median_s * math.exp(backend.sigma * dice.z)
    return Outcome(500 if dice.error < state.error_rate else 200, seconds)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one request got, from the router or an oracle: `tried` lists the backends that
    answered, in order; `cost` is what the upstreams bill (failed calls are free, lost hedges
    are not)."""

    request: int
    arrival: float
    served_by: str | None  # None: the request failed
    latency_s: float
    cost: Decimal
    images: int
    tried: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.served_by is not None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole run: the backends (catalog order), arrival times and dice[request][backend].
    `deadline_s` is the router's request deadline; `provider_timeout_s` each provider's
    read timeout (None: the deadline, so one slow call may use the whole of it)."""

    backends: tuple[Backend, ...]
    arrivals: tuple[float, ...]
    dice: tuple[tuple[Dice, ...], ...]
    duration_s: float
    deadline_s: float = 120.0
    max_in_flight: int = 128  # per backend: far above what this load needs (the report checks)
    provider_timeout_s: float | None = None

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)

    def read_timeout_s(self) -> float:
        """How long a provider's client waits for one call's reply."""
        return self.deadline_s if self.provider_timeout_s is None else self.provider_timeout_s

    def healthy_at(self, t: float) -> bool:
        """At least one backend is up (neither down nor hung)."""
        return any(b.state(t).up for b in self.backends)


def backends(duration_s: float) -> tuple[Backend, ...]:
    """The default market: an outage, a latency spike and a 429 storm, each on one backend,
    at the same fractions of any duration as at 900-1200, 1500-1800 and 2100-2400 of an hour."""
    k = duration_s / REFERENCE_DURATION_S
    return (
        Backend("budget", Decimal("0.030"), 9.0, 0.3,
                events=(Event("down", 900 * k, 1200 * k),)),
        Backend("mid", Decimal("0.045"), 6.0, 0.3,
                events=(Event("slow", 1500 * k, 1800 * k, factor=4.0),)),
        Backend("premium", Decimal("0.080"), 2.5, 0.3,
                events=(Event("rate_limited", 2100 * k, 2400 * k, factor=0.6),)),
        Backend("steady", Decimal("0.060"), 4.0, 0.3, error_rate=0.01),
    )


def build(seed: int, duration_s: float, rate: float,
          market: tuple[Backend, ...] | None = None) -> Scenario:
    """Poisson arrivals at `rate` per second over `duration_s`, and every pair's dice, all
    from one seeded generator: the same seed is the same run."""
    chosen = market if market is not None else backends(duration_s)
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate)
    dice = tuple(tuple(Dice(rng.gauss(0.0, 1.0), rng.random(), rng.random()) for _ in chosen)
                 for _ in arrivals)
    return Scenario(chosen, tuple(arrivals), dice, duration_s)
