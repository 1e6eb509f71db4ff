"""proxy.routing.health: breaker transitions, cooldowns, latency and probes on an injected clock."""

from __future__ import annotations

import itertools
from dataclasses import replace
from decimal import Decimal

import pytest

from proxy.catalog import Capabilities, Provider, Route
from proxy.config import Secret
from proxy.failures import Failure, Kind
from proxy.routing.health import Health, RouteHealth, Settings, State
from proxy.routing.latency import Latency


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _route(name: str = "r", latency: float = 10.0) -> Route:
    return Route(id=f"m/{name}", model="m",
                 provider=Provider(name=name, protocol="simulated", base_url=f"http://{name}"),
                 upstream_model="x", price_per_image={"1K": Decimal("0.01")},
                 capabilities=Capabilities(tiers=("1K",), aspect_ratios=("1:1",)),
                 typical_latency_s=latency)


def _health(settings: Settings | None = None) -> tuple[RouteHealth, Clock]:
    clock = Clock()
    return RouteHealth(_route(), settings or Settings(), clock), clock


def _attempt(health: RouteHealth, clock: Clock, failure: Failure | None,
             seconds: float = 1.0) -> None:
    token = health.begin()
    clock.now += seconds
    health.end(token, "1K", failure)


BROKEN = Failure(Kind.UPSTREAM_BROKEN, "x")
OVERLOADED = Failure(Kind.OVERLOADED, "x")


def test_five_consecutive_failures_open_the_breaker() -> None:
    health, clock = _health()
    for _ in range(4):
        _attempt(health, clock, BROKEN)
    assert health.state is State.CLOSED and health.snapshot("1K").available
    _attempt(health, clock, BROKEN)
    snap = health.snapshot("1K")
    assert snap.state is State.OPEN and not snap.available


def test_an_error_ratio_over_the_minimum_volume_opens_the_breaker() -> None:
    health, clock = _health()
    for i in range(10):  # alternating: never 5 in a row, but half of 10 failed
        _attempt(health, clock, BROKEN if i % 2 else None)
    assert health.state is State.OPEN


@pytest.mark.parametrize("kind", [Kind.BAD_REQUEST, Kind.CONTENT_BLOCKED])
def test_the_clients_own_failures_do_not_count(kind: Kind) -> None:
    health, clock = _health()
    for _ in range(20):
        _attempt(health, clock, Failure(kind, "x"))
    snap = health.snapshot("1K")
    assert snap.state is State.CLOSED and snap.available and snap.success_ratio == 1.0


def test_open_then_half_open_probe_closes_on_success() -> None:
    health, clock = _health()
    for _ in range(5):
        _attempt(health, clock, BROKEN)
    clock.now += Settings().cooldown_s
    assert health.state is State.HALF_OPEN
    token = health.begin()  # the probe
    assert not health.snapshot("1K").available, "one probe at a time"
    clock.now += 1
    health.end(token, "1K", None)
    assert health.state is State.CLOSED and health.snapshot("1K").available


def test_a_failed_probe_reopens_with_a_doubled_cooldown() -> None:
    settings = Settings()
    health, clock = _health(settings)
    for _ in range(5):
        _attempt(health, clock, BROKEN)
    clock.now += settings.cooldown_s
    _attempt(health, clock, BROKEN)
    assert health.state is State.OPEN
    clock.now += settings.cooldown_s  # not enough any more
    assert health.state is State.OPEN
    clock.now += settings.cooldown_s
    assert health.state is State.HALF_OPEN


def test_cooldowns_stop_growing_at_the_maximum() -> None:
    settings = Settings(cooldown_s=5, max_cooldown_s=12)
    health, clock = _health(settings)
    for _ in range(5):
        _attempt(health, clock, BROKEN)
    for _ in range(4):
        clock.now += 12
        _attempt(health, clock, BROKEN, seconds=0)
    clock.now += 12
    assert health.state is State.HALF_OPEN


def test_a_probe_that_proves_nothing_frees_the_slot() -> None:
    health, clock = _health()
    for _ in range(5):
        _attempt(health, clock, BROKEN)
    clock.now += Settings().cooldown_s
    _attempt(health, clock, Failure(Kind.CONTENT_BLOCKED, "x"))
    assert health.state is State.HALF_OPEN and health.snapshot("1K").available


def test_retry_after_rests_the_route_for_that_long() -> None:
    health, clock = _health()
    _attempt(health, clock, Failure(Kind.RATE_LIMITED, "slow down", retry_after_s=7.0))
    assert not health.snapshot("1K").available
    assert health.state is State.CLOSED, "a rate limit is a pause, not a broken route"
    clock.now += 6.9
    assert not health.snapshot("1K").available
    clock.now += 0.2
    assert health.snapshot("1K").available


def test_a_rate_limit_without_a_hint_rests_briefly() -> None:
    health, clock = _health()
    _attempt(health, clock, Failure(Kind.RATE_LIMITED, "x"))
    assert not health.snapshot("1K").available
    clock.now += Settings().rate_limit_cooldown_s
    assert health.snapshot("1K").available


def test_latency_starts_at_the_prior_and_follows_the_evidence() -> None:
    health, clock = _health()
    assert health.snapshot("1K").expected_s == 10.0
    assert health.snapshot("1K").p95_s == 15.0  # too few samples: the widened prior
    for _ in range(20):
        _attempt(health, clock, None, seconds=2.0)
    snap = health.snapshot("1K")
    assert snap.expected_s == pytest.approx(2.0, abs=0.01)
    assert snap.p95_s == pytest.approx(2.0)
    assert health.snapshot("2K").expected_s == 10.0, "tiers are tracked apart"


def test_p95_is_the_95th_percentile_of_recent_samples() -> None:
    health, clock = _health()
    for seconds in [1.0] * 19 + [9.0]:
        _attempt(health, clock, None, seconds=seconds)
    assert health.snapshot("1K").p95_s == 1.0
    _attempt(health, clock, None, seconds=9.0)
    assert health.snapshot("1K").p95_s == 9.0


def test_old_evidence_leaves_the_window() -> None:
    settings = Settings()
    health, clock = _health(settings)
    for _ in range(4):
        _attempt(health, clock, BROKEN)
    assert health.snapshot("1K").success_ratio == 0.0
    clock.now += settings.window_s + 1
    snap = health.snapshot("1K")
    assert snap.samples == 0 and snap.success_ratio == 1.0


def test_an_attempt_far_past_its_p95_marks_the_route_stalled() -> None:
    health, clock = _health()
    for _ in range(10):
        _attempt(health, clock, None, seconds=2.0)
    token = health.begin()
    clock.now += 3.5
    assert not health.snapshot("1K").stalled  # under max(1 s, 2 x p95)
    assert not health.hung(token, "1K")
    clock.now += 1.0
    snap = health.snapshot("1K")
    assert snap.stalled and snap.in_flight == 1
    assert health.hung(token, "1K")


def test_a_straggler_is_no_stall_while_its_route_delivers() -> None:
    # One slow attempt among many that come back: the host answers, this call is unlucky.
    health, clock = _health()
    for _ in range(10):
        _attempt(health, clock, None, seconds=2.0)
    straggler = health.begin()
    clock.now += 3.0
    _attempt(health, clock, None, seconds=2.0)  # delivered after the straggler began
    clock.now += 2.0
    assert not health.snapshot("1K").stalled
    assert not health.hung(straggler, "1K")


def test_probes_go_to_stale_routes_within_their_share() -> None:
    clock = Clock()
    best, stale = _route("best"), _route("stale")
    health = Health([best, stale], Settings(probe_share=0.1, stale_after_s=30), clock)
    ranked = [best, stale]
    probes = []
    for _ in range(200):
        clock.now += 1
        snaps = health.snapshots(ranked, "1K")
        probe = health.probe(ranked, snaps, "1K")
        if probe is not None:
            probes.append(clock.now)
            token = health.of(stale).begin()
            health.of(stale).end(token, "1K", None)
    # Never more than one per stale_after_s (the route is fresh after each probe), and the
    # first only once it has had no outcome for a while.
    assert probes and len(probes) <= 200 / 30 + 1
    assert all(b - a >= 30 for a, b in itertools.pairwise(probes))


def test_no_probe_for_the_best_route_or_an_unavailable_one() -> None:
    clock = Clock()
    best, down = _route("best"), _route("down")
    health = Health([best, down], Settings(probe_share=1.0), clock)
    for _ in range(5):
        _attempt(health.of(down), clock, BROKEN)
    clock.now += 100  # both stale; down's cooldown is long over, so it is half-open
    health.of(down).begin()  # … and its probe is already out
    assert health.probe([best, down], health.snapshots([best, down], "1K"), "1K") is None


def test_a_slow_success_that_started_before_the_failures_is_old_news() -> None:
    """A route goes down while long attempts are in flight: their late successes must neither
    reset the failure count nor close a breaker that just opened."""
    health, clock = _health()
    slow = [health.begin() for _ in range(6)]  # started while the route was still fine
    clock.now += 1
    for _ in range(3):
        _attempt(health, clock, BROKEN, seconds=0.1)
    health.end(slow.pop(), "1K", None)
    for _ in range(2):
        _attempt(health, clock, BROKEN, seconds=0.1)
    assert health.state is State.OPEN, "five failures since the outage began"
    health.end(slow.pop(), "1K", None)
    assert health.state is State.OPEN, "an old success does not close it"
    # A success that started after the failures is news: half-open probe closes the breaker.
    clock.now += Settings().cooldown_s
    _attempt(health, clock, None)
    assert health.state is State.CLOSED


def test_the_window_holds_at_most_window_max_outcomes() -> None:
    """At a high request rate a minute of outcomes is many thousands of entries per route
    (memory grew with the rate): the ratio is then over the newest window_max."""
    health, clock = _health(Settings(window_max=100))
    for _ in range(50):
        _attempt(health, clock, BROKEN, seconds=0.001)
        _attempt(health, clock, None, seconds=0.001)  # keeps the breaker closed
    for _ in range(500):
        _attempt(health, clock, None, seconds=0.001)
    snapshot = health.snapshot("1K")
    assert snapshot.samples == 100
    assert snapshot.success_ratio == 1.0


def test_a_lost_hedge_past_the_p95_counts_as_a_failure() -> None:
    # Issue 20.1: a host whose attempts keep losing hedges opens its breaker like a failing one.
    health, clock = _health()
    for _ in range(10):
        _attempt(health, clock, None, seconds=2.0)
    for _ in range(4):
        token = health.begin()
        clock.now += 2.5  # past the p95 (2.0 s) when the hedge won
        health.lost(token, "1K")
    assert health.state is State.CLOSED and health.snapshot("1K").success_ratio < 1.0
    token = health.begin()
    clock.now += 2.5
    health.lost(token, "1K")
    assert health.state is State.OPEN


def test_a_hedge_lost_within_the_p95_says_nothing() -> None:
    health, clock = _health()
    for _ in range(10):
        _attempt(health, clock, None, seconds=2.0)
    for _ in range(8):
        token = health.begin()
        clock.now += 1.0  # the other route was simply faster
        health.lost(token, "1K")
    snap = health.snapshot("1K")
    assert (snap.state, snap.success_ratio, snap.samples, snap.in_flight) == \
        (State.CLOSED, 1.0, 10, 0)


def test_closing_the_breaker_forgets_the_outage_in_the_success_ratio() -> None:
    # Issue 20.3: balanced divides by the success ratio; the outage's failures must not keep
    # a host that recovered behind for a minute.
    health, clock = _health()
    for _ in range(5):
        _attempt(health, clock, BROKEN)
    assert health.state is State.OPEN
    clock.now += Settings().cooldown_s
    _attempt(health, clock, None)
    snap = health.snapshot("1K")
    assert (snap.state, snap.success_ratio, snap.samples) == (State.CLOSED, 1.0, 1)


def test_a_half_open_route_that_could_lead_is_probed_before_stale_ones() -> None:
    clock = Clock()
    best, broken = _route("best"), _route("broken")
    health = Health([best, broken], Settings(probe_share=0.0), clock)
    for _ in range(5):
        token = health.of(broken).begin()
        health.of(broken).end(token, "1K", BROKEN)
    ranked = [best, broken]
    assert health.probe(ranked, health.snapshots(ranked, "1K"), "1K") is None  # open: not yet
    clock.now += Settings().cooldown_s
    assert health.probe(ranked, health.snapshots(ranked, "1K"), "1K") is broken  # no share needed
    health.of(broken).begin()  # the probe is on its way: nobody else's request goes there
    assert health.probe(ranked, health.snapshots(ranked, "1K"), "1K") is None


def test_cooldowns_keep_probing_a_down_host_every_few_seconds() -> None:
    # Issue 20.3: a host that recovered is found within one probe interval, not 30 s.
    health, clock = _health()
    for _ in range(5):
        _attempt(health, clock, BROKEN, seconds=0.1)
    gaps = []
    for _ in range(6):
        opened = clock.now
        while health.state is State.OPEN:
            clock.now += 0.5
        gaps.append(clock.now - opened)
        _attempt(health, clock, BROKEN, seconds=0.1)
    assert max(gaps) <= Settings().max_cooldown_s + 0.5 <= 7.0


def test_one_fast_probe_after_a_quiet_spell_outweighs_the_old_estimate() -> None:
    # Issue 20.3/20.4: a host that was slow, then out of traffic, is ranked back after one
    # fast probe; on a busy route the EWMA moves by about its usual alpha.
    knobs = Settings().latency
    busy, quiet = Latency(8.0, knobs), Latency(8.0, knobs)
    for i in range(10):
        busy.add(i * 0.1, 8.0)
        quiet.add(i * 0.1, 8.0)
    busy.add(1.0, 2.0)  # 0.1 s after the last sample
    quiet.add(601.0, 2.0)  # ten minutes after it: many calls' worth of time
    assert busy.ewma == pytest.approx(8.0 - Settings().ewma_alpha * 6.0, rel=0.05)
    assert quiet.ewma < 2.1


def test_a_run_of_fast_successes_ends_a_slow_spell_in_the_p95() -> None:
    # Issue 20.4: max_latency_s and the hedge trigger follow a recovery as fast as the
    # breaker follows failures (five in a row), not after the window rolls over.
    health, clock = _health()
    for _ in range(20):
        _attempt(health, clock, None, seconds=8.0)
    assert health.snapshot("1K").p95_s == 8.0
    for _ in range(4):
        _attempt(health, clock, None, seconds=1.0)
    assert health.snapshot("1K").p95_s == 8.0
    _attempt(health, clock, None, seconds=1.0)
    assert health.snapshot("1K").p95_s == 1.0
    _attempt(health, clock, None, seconds=8.0)  # and a slow one counts again at once
    assert health.snapshot("1K").p95_s == 8.0


def test_a_failure_many_requests_share_counts_once() -> None:
    # Issue 22.3: one failed create of a batch job fails all its members; the route saw one
    # failure, not one per member (that opened its breaker and sent the rest to full price).
    health, clock = _health()
    shared = Failure(Kind.OVERLOADED, "create failed", shared="switchyard-group-1")
    for _ in range(8):
        _attempt(health, clock, shared)
    assert health.state is State.CLOSED
    snap = health.snapshot("1K")
    assert (snap.samples, snap.success_ratio) == (1, 0.0)
    for group in range(2, 6):  # other jobs' creates are failures of their own
        _attempt(health, clock, Failure(Kind.OVERLOADED, "x", shared=f"switchyard-group-{group}"))
    assert health.state is State.OPEN


def test_a_half_open_probe_is_one_request_not_every_one_planned_meanwhile() -> None:
    # Review: requests planned before the probe's attempt began all led with the half-open
    # route, each held to the probe's deadline.
    clock = Clock()
    best, broken = _route("best"), _route("broken")
    health = Health([best, broken], Settings(probe_share=0.0), clock)
    for _ in range(5):
        health.of(broken).end(health.of(broken).begin(), "1K", BROKEN)
    clock.now += Settings().cooldown_s
    ranked = [best, broken]
    assert health.probe(ranked, health.snapshots(ranked, "1K"), "1K") is broken
    assert health.probe(ranked, health.snapshots(ranked, "1K"), "1K") is None  # promised already
    clock.now += health.of(broken).stall_s("1K") + 0.1  # its request never began it
    assert health.probe(ranked, health.snapshots(ranked, "1K"), "1K") is broken


def test_a_refused_token_commands_token_rests_briefly_a_static_key_long() -> None:
    # A token command's next attempt fetches a fresh token: no five-minute rest for it.
    refused = Failure(Kind.AUTH, "token expired")
    route, keyed_clock = _route("vertex"), Clock()
    keyed = RouteHealth(replace(route, provider=replace(route.provider, key=Secret("k"))),
                        Settings(), keyed_clock)
    keyed.end(keyed.begin(), "1K", refused)
    assert keyed.snapshot("1K").refused
    tokened = RouteHealth(replace(route, provider=replace(
        route.provider, options={"token_command": "gcloud auth print-access-token"})),
        Settings(), keyed_clock)
    tokened.end(tokened.begin(), "1K", refused)
    assert not tokened.snapshot("1K").refused
    keyed_clock.now += Settings().rate_limit_cooldown_s + 0.1
    assert tokened.snapshot("1K").available and not keyed.snapshot("1K").available


def test_a_long_tail_is_no_end_of_a_slow_spell() -> None:
    # Review: five calls in a row under half the p95 is ordinary luck when latencies have a
    # long tail; only a run under half the median ends a slow spell.
    health, clock = _health()
    for seconds in [1.0, 3.0] * 10:
        _attempt(health, clock, None, seconds=seconds)
    assert health.snapshot("1K").p95_s == 3.0
    for _ in range(6):
        _attempt(health, clock, None, seconds=1.2)  # under 3.0 / 2, not under the median's
    assert health.snapshot("1K").p95_s == 3.0
