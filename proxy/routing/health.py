"""Live health per route: latency by tier, success ratio, in-flight, breaker and cooldowns.

Everything here is a function of the evidence and an injected clock, so ranking is tested
table-driven and the market benchmark runs the same code on a fake clock. The router reports
each attempt's start and end; strategies read frozen snapshots.

Silence is evidence too. An attempt far past its route's p95 while the route delivered
nothing since it began is a hang: the route is `stalled` (ranked behind the others) and the
router moves or races that attempt (run.py). An attempt that lost a hedge after running past
the p95 counts as a failure, so a host that keeps losing hedges opens its breaker like one
that keeps failing. A breaker's probe is bounded by the same stall time, so probing a host
that hangs costs one client a second or so, not a full timeout; and the probe comes every
few seconds, so a host that recovered is back within about that long.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from proxy.catalog import Route
from proxy.failures import Failure, Kind
from proxy.routing.evidence import (
    COUNTED,
    SHARED_KEPT,
    Outcome,
    Settings,
    Snapshot,
    State,
    verdict,
)
from proxy.routing.latency import Latency

__all__ = ["COUNTED", "Health", "Outcome", "RouteHealth", "Settings", "Snapshot", "State",
           "verdict"]


class RouteHealth:
    """The evidence about one route. Not thread-safe: it lives on the event loop."""

    def __init__(self, route: Route, settings: Settings, clock: Callable[[], float]) -> None:
        self.route_id = route.id
        self.provider = route.provider.name
        self._prior = route.typical_latency_s
        self._static_key = route.provider.key is not None  # not a token command's
        self._settings = settings
        self._clock = clock
        self._tiers: dict[str, Latency] = {}
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0  # of the outcomes in the window: kept, not counted per request
        self._consecutive = 0
        self._state = State.CLOSED
        self._open_until = 0.0
        self._cooldown = settings.cooldown_s
        self._probing = False
        self._promised_until = 0.0  # a plan put this half-open route first: its probe
        self._resting_until = 0.0  # Retry-After
        self._limited_until = 0.0  # the part of it a host asked this replica for (a 429)
        self._refused_until = 0.0  # a refused credential (also a rest)
        self._starts: dict[int, float] = {}
        self._next_token = 0
        # When the latest counted failure's attempt started: a success that started earlier
        # is older news and neither resets the failure count nor closes the breaker.
        self._failure_started = -math.inf
        self._delivered_at = -math.inf  # the latest success's end: a hang has none since
        self._shared: deque[str] = deque(maxlen=SHARED_KEPT)  # shared failures counted
        self.last_outcome_at = -math.inf
        self.tell: Callable[[Outcome], None] | None = None  # hears each local outcome

    # --- evidence -----------------------------------------------------------------------

    def begin(self) -> int:
        """An attempt starts; the token goes back to `end`. A half-open route's attempt is
        its probe."""
        now = self._clock()
        self._refresh(now)
        if self._state is State.HALF_OPEN:
            self._probing = True
            self._promised_until = 0.0
        self._next_token += 1
        self._starts[self._next_token] = now
        return self._next_token

    def end(self, token: int, tier: str, failure: Failure | None) -> float:
        """An attempt ended (failure None: it delivered). Returns its seconds."""
        now = self._clock()
        started = self._starts.pop(token, now)
        seconds = now - started
        ok, rest = verdict(failure, self._settings)
        if failure is not None and failure.kind is Kind.AUTH:
            if self._static_key:
                self._refused_until = max(self._refused_until, now + rest)
            else:  # a token command's token: the next attempt fetches a fresh one
                rest = self._settings.rate_limit_cooldown_s
        elif rest:
            self._limited_until = max(self._limited_until, now + rest)
        if failure is not None and failure.shared is not None:
            if failure.shared in self._shared:
                ok = None  # a batch's one failed create, counted with its first member
            else:
                self._shared.append(failure.shared)
        self._apply(now, started, tier, seconds, ok, rest)
        self._probing = False  # a probe that proved nothing frees the slot for the next
        if self.tell is not None and (ok is not None or rest):
            self.tell(Outcome(self.route_id, tier, seconds, ok, rest))
        return seconds

    def observe(self, outcome: Outcome) -> None:
        """Another replica's attempt ended: its evidence counts as if it were ours, as of
        now (clocks differ between hosts; it is at most a flush and a hop old)."""
        now = self._clock()
        self._refresh(now)
        self._apply(now, now - outcome.seconds, outcome.tier, outcome.seconds, outcome.ok,
                    outcome.rest_s)

    def held_out(self) -> tuple[float, float]:
        """Seconds left of this route's open breaker, and of a rest its host asked this
        replica for (a 429; not a refused credential's, which a new key ends) (0.0: none)."""
        now = self._clock()
        self._refresh(now)
        open_s = self._open_until - now if self._state is State.OPEN else 0.0
        return max(0.0, open_s), max(0.0, self._limited_until - now)

    def hold_out(self, open_s: float, rest_s: float) -> None:
        """What the fleet knew before this replica listened: the breaker open for `open_s`
        (then half-open, its probe due, as anywhere) and a rest of `rest_s`."""
        now = self._clock()
        self._refresh(now)
        if open_s > 0 and (self._state is not State.OPEN or now + open_s > self._open_until):
            self._state, self._probing = State.OPEN, False
            self._open_until = now + open_s
        if rest_s > 0:
            self._resting_until = max(self._resting_until, now + rest_s)

    def _apply(self, now: float, started: float, tier: str, seconds: float, ok: bool | None,
               rest: float) -> None:
        if rest:
            self._resting_until = max(self._resting_until, now + rest)
        if ok:
            self._succeeded(now, tier, seconds, started)
        elif ok is not None:
            self._failed(now, started)

    def abandon(self, token: int) -> None:
        """An attempt was cancelled for a reason of its own (the client left, the request
        failed elsewhere): no evidence either way."""
        self._starts.pop(token, None)
        self._probing = False

    def lost(self, token: int, tier: str) -> None:
        """An attempt was cancelled because another route delivered first (a hedge). One
        that ran past the p95 is a slow answer or none: a counted failure, told like any
        other; one still within it says nothing."""
        started = self._starts.get(token)
        if started is None or self._clock() - started <= self.p95(tier):
            self.abandon(token)
            return
        self.end(token, tier, Failure(Kind.TIMEOUT, "lost a hedge after its route's p95"))

    def hung(self, token: int, tier: str) -> bool:
        """This attempt is past the stall time and its route delivered nothing since it
        began (router.py moves or races it)."""
        started = self._starts.get(token)
        if started is None:
            return False
        return self._clock() - started >= self.stall_s(tier) and self._delivered_at <= started

    def stall_s(self, tier: str) -> float:
        """How long an attempt may go unanswered before its silence is a hang (and how long
        a breaker's probe may take)."""
        s = self._settings
        return max(s.stall_floor_s, s.stall_factor * self.p95(tier))

    def p95(self, tier: str) -> float:
        return self._p95(self._tiers.get(tier), self._clock())

    def hedge_after_s(self, tier: str) -> float:
        """How long the first attempt runs before a hedge starts."""
        entry = self._tiers.get(tier)
        if entry is None:
            return 1.5 * self._prior
        return entry.quantile(self._clock(), self._settings.hedge_quantile)

    def _succeeded(self, now: float, tier: str, seconds: float, started: float) -> None:
        entry = self._tiers.get(tier)
        if entry is None:
            entry = self._tiers[tier] = Latency(self._prior, self._settings.latency)
        entry.add(now, seconds)
        self._delivered_at = max(self._delivered_at, now)
        if started >= self._failure_started and self._state is not State.CLOSED:
            # The breaker closes: the failures that opened it were another spell's, and
            # would keep a recovered host behind (balanced divides by the success ratio).
            self._outcomes.clear()
            self._failures = 0
        self._record(now, True)
        if started < self._failure_started:
            return
        self._consecutive = 0
        self._state, self._probing, self._cooldown = State.CLOSED, False, \
            self._settings.cooldown_s

    def _failed(self, now: float, started: float) -> None:
        self._record(now, False)
        self._failure_started = max(self._failure_started, started)
        self._consecutive += 1
        if self._state is State.HALF_OPEN:
            self._cooldown = min(self._cooldown * 2, self._settings.max_cooldown_s)
            self._open(now)
        elif self._state is State.CLOSED and self._should_open():
            self._open(now)

    def _should_open(self) -> bool:
        s = self._settings
        if self._consecutive >= s.open_after_failures:
            return True
        volume = len(self._outcomes)
        failed = self._failures
        return volume >= s.open_min_volume and failed / volume >= s.open_ratio

    def _open(self, now: float) -> None:
        self._state, self._probing = State.OPEN, False
        self._open_until = now + self._cooldown

    def _record(self, now: float, ok: bool) -> None:
        self._outcomes.append((now, ok))
        self._failures += not ok
        self.last_outcome_at = now
        self._trim(now)

    def _trim(self, now: float) -> None:
        outcomes, oldest = self._outcomes, now - self._settings.window_s
        while outcomes and (outcomes[0][0] < oldest or len(outcomes) > self._settings.window_max):
            self._failures -= not outcomes.popleft()[1]

    def _refresh(self, now: float) -> None:
        if self._state is State.OPEN and now >= self._open_until:
            self._state = State.HALF_OPEN
        self._trim(now)

    # --- reading ------------------------------------------------------------------------

    def snapshot(self, tier: str) -> Snapshot:
        now = self._clock()
        self._refresh(now)
        entry = self._tiers.get(tier)
        expected = entry.ewma if entry else self._prior
        p95 = self._p95(entry, now)
        volume = len(self._outcomes)
        ok = volume - self._failures
        # The oldest attempt begun after the latest delivery: silent all along.
        silent = min((t for t in self._starts.values() if t >= self._delivered_at),
                     default=now)
        stall_s = max(self._settings.stall_floor_s, self._settings.stall_factor * p95)
        return Snapshot(
            state=self._state, available=self._available(now), expected_s=expected, p95_s=p95,
            success_ratio=ok / volume if volume else 1.0, in_flight=len(self._starts),
            samples=volume, stalled=now - silent >= stall_s,
            refused=now < self._refused_until,
        )

    def _available(self, now: float) -> bool:
        if now < self._resting_until or self._state is State.OPEN:
            return False
        return self._state is State.CLOSED or \
            not (self._probing or now < self._promised_until)

    def promise_probe(self, tier: str) -> None:
        """A plan made this half-open route its probe: other requests planned before that
        attempt begins must not send theirs too (one client pays for a probe, not a burst).
        The promise lapses after the stall time, should its request never begin it."""
        self._promised_until = self._clock() + self.stall_s(tier)

    def _p95(self, entry: Latency | None, now: float) -> float:
        return 1.5 * self._prior if entry is None else entry.p95(now)

    @property
    def state(self) -> State:
        self._refresh(self._clock())
        return self._state


class Health:
    """Every route's health, by route id; built once in the app's lifespan."""

    def __init__(self, routes: Iterable[Route], settings: Settings | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings or Settings()
        self.clock = clock or time.monotonic
        self._routes = {r.id: RouteHealth(r, self.settings, self.clock) for r in routes}
        self._requests = 0
        self._probes = 0
        self._last_probe: dict[str, float] = {}
        self._tell: Callable[[Outcome], None] | None = None

    def of(self, route: Route) -> RouteHealth:
        found = self._routes.get(route.id)
        if found is None:  # a route built after startup (tests); tracked from now on
            found = self._routes[route.id] = RouteHealth(route, self.settings, self.clock)
            found.tell = self._tell
        return found

    def listen(self, tell: Callable[[Outcome], None]) -> None:
        """Hand every local outcome that is evidence to `tell` (a fleet shares them)."""
        self._tell = tell
        for route in self._routes.values():
            route.tell = tell

    def observe(self, outcome: Outcome) -> str | None:
        """Another replica's evidence about a route this process knows (others: ignored,
        a replica on an older catalog may name a route this one dropped); the route's
        provider, if known."""
        found = self._routes.get(outcome.route_id)
        if found is None:
            return None
        found.observe(outcome)
        return found.provider

    def known(self, route_id: str) -> RouteHealth | None:
        """The health of a route this process knows, by its id (another replica's news)."""
        return self._routes.get(route_id)

    def route_ids(self) -> list[str]:
        return list(self._routes)

    def snapshots(self, routes: Iterable[Route], tier: str) -> dict[str, Snapshot]:
        return {r.id: self.of(r).snapshot(tier) for r in routes}

    def probe(self, ranked: list[Route], snapshots: dict[str, Snapshot],
              tier: str) -> Route | None:
        """A route to try first so it can earn traffic back: one whose breaker waits for its
        probe (the cooldown paces those), else a stale route (no outcome for a while) within
        the probe share. `ranked`: the leader, then routes that could lead on fresh
        evidence. Counts every request it is asked about."""
        self._requests += 1
        for route in ranked[1:]:
            snap = snapshots[route.id]
            if snap.state is State.HALF_OPEN and snap.available:
                self.of(route).promise_probe(tier)
                return route
        now = self.clock()
        s = self.settings
        if self._probes + 1 > s.probe_share * self._requests:
            return None
        for route in ranked[1:]:
            snap = snapshots[route.id]
            stale = now - self.of(route).last_outcome_at >= s.stale_after_s
            recent = now - self._last_probe.get(route.id, -math.inf) < s.stale_after_s
            if snap.available and stale and not recent and snap.in_flight == 0:
                self._probes += 1
                self._last_probe[route.id] = now
                return route
        return None
