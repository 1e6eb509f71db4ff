"""proxy.bench: the virtual clock, the oracle on a hand-made market, the market agreeing with the
oracle, and a smoke run of the whole routing benchmark (not timed: wall time is not tested)."""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal

import pytest

from proxy import cli
from proxy.bench import oracle, report, routing, runner
from proxy.bench.clock import Deadlock, run_virtual
from proxy.bench.scenario import Backend, Dice, Event, Outcome, Scenario, answer, build
from proxy.domain import Image, ImageResult
from proxy.failures import Kind, UpstreamError
from proxy.providers import flows
from proxy.providers.base import Flow, Sleep

# --- the virtual clock --------------------------------------------------------------------


def test_an_hour_of_sleep_passes_in_virtual_time_only() -> None:
    async def sleep_an_hour() -> float:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - before

    started = time.perf_counter()
    assert run_virtual(sleep_an_hour()) == 3600
    assert time.perf_counter() - started < 1.0


def test_wait_for_times_out_in_virtual_time() -> None:
    async def too_slow() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), timeout=5)
        return loop.time()

    assert run_virtual(too_slow()) == 5


def test_waiting_on_nothing_is_a_deadlock_not_a_hang() -> None:
    async def forever() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(Deadlock):
        run_virtual(forever())


def _pauses(seconds: float, times: int) -> Flow:
    for _ in range(times):
        yield Sleep(seconds)
    return ImageResult(images=(Image("image/png", ""),))


def test_flow_deadlines_follow_the_loop_clock() -> None:
    """The flows measure deadlines on the running loop's clock, so they work in virtual time:
    pauses within the deadline complete; pauses past it are cut at the deadline, where the
    flow ends as a timeout."""
    route = runner.market.routes(build(0, 10, 1.0))[0]

    async def go() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        await flows.drive(_pauses(15, 2), route, None, 100)  # type: ignore[arg-type]
        done = loop.time()
        with pytest.raises(UpstreamError) as caught:
            await flows.drive(_pauses(40, 3), route, None, 90)  # type: ignore[arg-type]
        assert caught.value.failure.kind is Kind.TIMEOUT
        return done, loop.time()

    assert run_virtual(go()) == (30, 90)


# --- the market and the oracle ------------------------------------------------------------

CHEAP = Backend("cheap", Decimal("0.01"), median_s=10.0, sigma=0.0, error_rate=0.5,
                events=(Event("down", 0, 5),))
FAST = Backend("fast", Decimal("0.02"), median_s=2.0, sigma=0.5, error_rate=0.5,
               events=(Event("rate_limited", 100, 200, factor=0.5, retry_after_s=7),))
LUCKY = Dice(z=0.0, error=0.9, limit=0.9)
UNLUCKY = Dice(z=0.0, error=0.1, limit=0.1)


def _market(arrivals: tuple[float, ...], dice: tuple[tuple[Dice, ...], ...],
            deadline_s: float = 120.0) -> Scenario:
    return Scenario((CHEAP, FAST), arrivals, dice, duration_s=300, deadline_s=deadline_s)


@pytest.mark.parametrize(("backend", "t", "dice", "outcome"), [
    (CHEAP, 1, LUCKY, Outcome(503, 0.2)),
    (CHEAP, 5, LUCKY, Outcome(200, 10.0)),
    (CHEAP, 5, UNLUCKY, Outcome(500, 10.0)),
    (FAST, 150, UNLUCKY, Outcome(429, 0.3, 7)),
    (FAST, 150, Dice(z=1.0, error=0.9, limit=0.6), Outcome(200, 2.0 * math.exp(0.5))),
])
def test_answer_follows_the_state_and_the_dice(backend: Backend, t: float, dice: Dice,
                                               outcome: Outcome) -> None:
    assert answer(backend, backend.state(t), dice) == outcome


def test_the_cost_oracle_skips_a_down_backend_and_fails_over_on_the_same_dice() -> None:
    market = _market((1.0, 10.0), ((LUCKY, LUCKY), (UNLUCKY, LUCKY)))
    first, second = oracle.oracle(market, oracle.by_cost)
    assert (first.served_by, first.tried, first.latency_s, first.cost) == \
        ("fast", ("fast",), 2.0, Decimal("0.02"))
    # cheap is up but this call fails after its 10 s; fast delivers 2 s later.
    assert (second.served_by, second.tried, second.latency_s, second.cost) == \
        ("fast", ("cheap", "fast"), 12.0, Decimal("0.02"))


def test_the_latency_oracle_ranks_by_the_true_median() -> None:
    market = _market((10.0,), ((LUCKY, UNLUCKY),))
    (only,) = oracle.oracle(market, oracle.by_latency)
    assert (only.served_by, only.tried, only.latency_s) == ("cheap", ("fast", "cheap"), 12.0)


def test_a_walk_that_passes_the_deadline_fails() -> None:
    market = _market((10.0,), ((LUCKY, UNLUCKY),), deadline_s=11.0)
    (only,) = oracle.oracle(market, oracle.by_latency)
    assert not only.ok and only.cost == 0 and only.latency_s == 11.0


def test_a_single_provider_has_no_failover() -> None:
    market = _market((1.0, 10.0), ((LUCKY, LUCKY), (LUCKY, LUCKY)))
    down, up = oracle.single(market, "cheap")
    assert (down.ok, down.tried, up.served_by, up.latency_s) == (False, ("cheap",), "cheap", 10)


def test_the_router_sees_the_market_the_oracle_computes() -> None:
    """With one backend there is nothing to choose: the real router through the simulated
    transport must get exactly what the single-provider walk computes, request by request."""
    solo = Backend("solo", Decimal("0.05"), median_s=3.0, sigma=0.4, error_rate=0.1)
    market = build(7, 300, 1.0, market=(solo,))
    ran = runner.run(market, "cheapest")
    expected = oracle.single(market, "solo")
    assert [d.served_by for d in ran.deliveries] == [d.served_by for d in expected]
    assert [d.cost for d in ran.deliveries] == [d.cost for d in expected]
    assert ran.deliveries[0].latency_s == pytest.approx(expected[0].latency_s)
    assert [d.latency_s for d in ran.deliveries] == pytest.approx(
        [d.latency_s for d in expected])
    assert 0 < sum(d.ok for d in ran.deliveries) < len(ran.deliveries)


# --- the whole benchmark, short ---------------------------------------------------------


def test_a_short_benchmark_reports_every_contender_with_sane_numbers() -> None:
    results = routing.measure(seed=3, duration_s=120, rate=1.0, workers=1)
    assert [r.name for r in results.runs] == list(routing.STRATEGIES)
    contenders = [*(r.deliveries for r in results.runs), results.cost_oracle,
                  results.latency_oracle, *results.singles.values()]
    for deliveries in contenders:
        row = report.summarize("x", deliveries)
        assert row.requests == len(results.scenario.arrivals) > 50
        assert 0 < row.success <= 1
        assert row.cost_per_image > 0 and 0 < row.p50_s <= row.p95_s
    text = report.render(results, wall_s=1.0)
    names = [f"router: {s}" for s in routing.STRATEGIES] + ["oracle: cost", "oracle: latency"] \
        + [f"always {b.name}" for b in results.scenario.backends]
    assert all(any(line.startswith(name) for line in text.splitlines()) for name in names)
    verdicts = [line for line in text.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert len(verdicts) == 5


def test_the_command_prints_both_markets_reports(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "routing", "--duration", "60", "--rate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "router: cheapest" in out and "Targets" in out and "wall time" in out
    assert "Hangs benchmark" in out and "Targets (issue 20)" in out
    assert out.index("router: cheapest") < out.index("Hangs benchmark")
    assert out.index("Hangs benchmark") < out.index("Key pools benchmark")
    assert out.index("Key pools benchmark") < out.index("Response cache:")
    assert out.count("wall time") == 3 and "lower with the cache" in out


@pytest.mark.parametrize(("market", "shown", "hidden"), [
    ("default", "router: cheapest", "Hangs benchmark"),
    ("hangs", "Hangs benchmark", "router: cheapest"),
])
def test_the_command_prints_one_market_when_asked(capsys: pytest.CaptureFixture[str],
                                                  market: str, shown: str, hidden: str) -> None:
    assert cli.main(["bench", "routing", "--market", market, "--duration", "60",
                     "--rate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert shown in out and hidden not in out
