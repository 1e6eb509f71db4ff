"""What route health is made of: its knobs, a route's state as the strategies read it, one
attempt's evidence in a form replicas share, and what a failure says about its route."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.failures import Failure, Kind
from proxy.routing.latency import Knobs

# Failures that say something about the route. The client's own (bad request, content
# blocked) do not; rate limits are a cooldown, not a sign the route is broken.
COUNTED: frozenset[Kind] = frozenset({Kind.OVERLOADED, Kind.TIMEOUT, Kind.UPSTREAM_BROKEN,
                                      Kind.AUTH})


# Shared failures (Failure.shared) remembered per route: a batch's members report theirs
# within seconds of each other, so the last few dozen are plenty.
SHARED_KEPT = 64


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Settings:
    """The health model's knobs; the defaults meet the routing benchmark's targets."""

    window_s: float = 60.0  # success ratio over this sliding window
    # ... of at most this many outcomes: at 1000 requests a second a minute's outcomes would
    # hold 60,000 entries (about 5 MB) per route, and 2048 tell the ratio as well.
    window_max: int = 2048
    ewma_alpha: float = 0.3  # weight of the newest latency sample (when the EWMA is fresh)
    ewma_fresh_s: float = 3.0  # an EWMA this old weighs e times less against a new sample
    latency_window_s: float = 120.0  # p95 from samples this recent
    p95_samples: int = 32  # at most this many per tier
    min_p95_samples: int = 5  # below this the p95 is the prior's
    open_after_failures: int = 5  # consecutive counted failures; also the run of fast
    # successes after which a slow spell's samples leave the p95 (latency.py)
    open_ratio: float = 0.5  # or this failure ratio over the window ...
    open_min_volume: int = 10  # ... once it holds this many outcomes
    cooldown_s: float = 2.0  # first open period; doubles on each failed probe ...
    max_cooldown_s: float = 4.0  # ... to this: a host that recovered is probed this soon
    rate_limit_cooldown_s: float = 1.0  # a 429 without Retry-After
    # A refused credential (401, 403, quota exhausted) takes its route out this long: a
    # key pool's other keys go on (proxy/key_pools.py); then one request tries it again.
    refused_rest_s: float = 300.0
    stale_after_s: float = 1.0  # a route that could lead, with no outcome this long,
    # earns a probe
    probe_share: float = 0.05  # at most this share of requests go to stale routes first
    # An attempt in flight longer than max(floor, factor x p95) while its route delivered
    # nothing since it began is a hang; a breaker's probe gets no longer than that either.
    stall_floor_s: float = 1.0
    stall_factor: float = 2.0
    # A hedge starts past this quantile of the first route's latency: at the p95 a hedge
    # runs for about 6% of requests (32 samples' nearest rank), and each costs a second
    # image's price; at the 97th, about 3%.
    hedge_quantile: float = 0.97

    @property
    def latency(self) -> Knobs:
        return Knobs(self.ewma_alpha, self.ewma_fresh_s, self.latency_window_s,
                     self.p95_samples, self.min_p95_samples, self.open_after_failures)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A route's health as the strategies see it, at one instant."""

    state: State
    available: bool  # may take a request now (closed and not cooling down, or a free probe)
    expected_s: float  # EWMA of attempt seconds for the tier (the catalog's prior until data)
    p95_s: float
    success_ratio: float  # over the window; 1.0 with no evidence
    in_flight: int
    samples: int  # outcomes in the window
    stalled: bool  # an attempt is far past this route's p95 and nothing was delivered since
    refused: bool = False  # the host refused its credential: out until the rest ends


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's evidence in a form another replica can apply (proxy/state shares it)."""

    route_id: str
    tier: str
    seconds: float
    ok: bool | None  # delivered, a counted failure, or neither (a rest alone)
    rest_s: float = 0.0  # a Retry-After (or a 429's default rest)


def verdict(failure: Failure | None, settings: Settings) -> tuple[bool | None, float]:
    """What an attempt's failure (None: it delivered) says about its route: (ok, rest)."""
    if failure is None:
        return True, 0.0
    rest = 0.0
    if failure.kind is Kind.AUTH:
        rest = settings.refused_rest_s
    elif failure.kind is Kind.RATE_LIMITED or failure.retry_after_s:
        rest = failure.retry_after_s or settings.rate_limit_cooldown_s
    return (False if failure.kind in COUNTED else None), rest
