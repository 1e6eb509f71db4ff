"""proxy.bench's hangs market (issue 20): hang semantics in the market and the oracles, the
phase split, the 80%-share recovery, the targets' verdicts, and a short end-to-end run."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from decimal import Decimal

import httpx
import pytest

from proxy.bench import hangs, oracle, phase_report, phase_targets, runner
from proxy.bench.clock import run_virtual
from proxy.bench.market import Call, MarketUpstream
from proxy.bench.phases import (
    Figures,
    HangExit,
    Phase,
    Recovery,
    Row,
    back_after,
    hang_exits,
    recoveries,
    split,
)
from proxy.bench.runner import RouterRun
from proxy.bench.scenario import Backend, Delivery, Dice, Event, Scenario, answer

# --- a hang in the market and in the oracles ------------------------------------------------

HUNG = Backend("hung", Decimal("0.01"), median_s=1.0, sigma=0.0, events=(Event("hang", 0, 100),))
DEAR = Backend("dear", Decimal("0.09"), median_s=2.0, sigma=0.0)
LUCKY = Dice(z=0.0, error=0.9, limit=0.9)


def _market(*arrivals: float) -> Scenario:
    return Scenario((HUNG, DEAR), arrivals, tuple((LUCKY, LUCKY) for _ in arrivals),
                    duration_s=200, deadline_s=60, provider_timeout_s=10)


def test_a_hung_backend_is_not_up_and_never_answers() -> None:
    state = HUNG.state(50)
    assert state.hung and not state.up and not state.down
    assert math.isinf(answer(HUNG, state, LUCKY).seconds)
    assert HUNG.state(100).up  # the hang is over
    market = replace(_market(1.0), backends=(HUNG,))
    assert not market.healthy_at(50) and market.healthy_at(150)


def _post(read_timeout: float | None) -> httpx.Request:
    extensions = {"timeout": {"read": read_timeout}} if read_timeout is not None else {}
    return httpx.Request("POST", "http://hung/generate", json={"request": 0, "n": 1},
                         extensions=extensions)


def test_a_call_during_a_hang_ends_as_a_timeout_at_the_read_timeout() -> None:
    upstream = MarketUpstream(_market(0.0), lambda name: "closed")

    async def call() -> float:
        with pytest.raises(httpx.ReadTimeout):
            await upstream.handle_async_request(_post(10.0))
        return asyncio.get_running_loop().time()

    assert run_virtual(call()) == 10.0
    assert upstream.calls == [Call(0.0, 10.0, "hung", 0, "timeout", "closed")]


def test_a_hung_call_without_a_read_timeout_waits_until_cancelled() -> None:
    upstream = MarketUpstream(_market(0.0), lambda name: "closed")

    async def call() -> bool:
        task = asyncio.create_task(upstream.handle_async_request(_post(None)))
        await asyncio.sleep(1000)
        waiting = not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return waiting

    assert run_virtual(call())
    assert upstream.calls == [Call(0.0, 1000.0, "hung", 0, "cancelled", "closed")]


def test_the_oracles_rank_a_hung_backend_last_and_never_deliver_from_it() -> None:
    market = _market(5.0, 150.0)
    during, after = oracle.oracle(market, oracle.by_cost)
    assert (during.served_by, during.tried, during.latency_s) == ("dear", ("dear",), 2.0)
    assert (after.served_by, after.tried) == ("hung", ("hung",))  # the hang is over
    # Forced to try it first, a walk waits out the read timeout, then fails over.
    walked = oracle.walk(market, 0, [0, 1])
    assert (walked.served_by, walked.tried, walked.latency_s) == ("dear", ("hung", "dear"), 12.0)
    alone = oracle.single(market, "hung")
    assert not alone[0].ok and alone[0].latency_s == 10.0 and alone[1].ok


def test_the_real_router_gets_nothing_from_a_hung_host_and_fails_over() -> None:
    """However soon the router gives up on the hung call (at the read timeout at the latest),
    that call answers nothing and the next host delivers."""
    ran = runner.run(_market(1.0), "cheapest")
    (only,) = ran.deliveries
    assert (only.served_by, only.tried) == ("dear", ("hung", "dear"))
    hung, dear = ran.calls
    assert hung.backend == "hung" and hung.outcome in ("timeout", "cancelled")
    assert hung.ended - hung.started <= 10.0 and dear.started == hung.ended
    assert dear.outcome == "200" and only.latency_s == pytest.approx(hung.ended + 2.0 - 1.0)


# --- phases ------------------------------------------------------------------------------


def test_the_hangs_market_splits_into_its_audit_phases() -> None:
    phases = split(hangs.backends(600), 600)
    assert [(p.name, p.start_s, p.end_s) for p in phases] == [
        ("calm", 0, 60), ("cheap-down", 60, 120), ("after-down", 120, 180),
        ("cheap-hang", 180, 220), ("after-hang", 220, 300), ("dear-slow", 300, 360),
        ("after-slow", 360, 450), ("cheap-429", 450, 510), ("after-429", 510, 600)]
    assert [p.disturbed for p in phases] == [False, True, False, True, False, True, False,
                                             False, False]
    assert all(p.length_s >= 30 for p in phases)


def test_overlapping_events_make_phases_of_their_own() -> None:
    a = Backend("a", Decimal(1), 1.0, 0.0, events=(Event("down", 10, 30),))
    b = Backend("b", Decimal(1), 1.0, 0.0, events=(Event("slow", 20, 40, factor=2),))
    assert [(p.name, p.start_s, p.end_s) for p in split((a, b), 50)] == [
        ("calm", 0, 10), ("a-down", 10, 20), ("a-down+b-slow", 20, 30), ("b-slow", 30, 40),
        ("after-slow", 40, 50)]


# --- recovery to 80% of the usual share ---------------------------------------------------


def _served(pattern: list[tuple[float, float, str | None]]) -> tuple[Delivery, ...]:
    """Arrivals every 0.5 s over each (start, end) span, served by the named backend."""
    found: list[Delivery] = []
    for start, end, by in pattern:
        for i in range(int((end - start) * 2)):
            arrival = start + i / 2
            found.append(Delivery(len(found), arrival, by, 0.5, Decimal("0.03"),
                                  1 if by else 0, (by or "x",)))
    return tuple(found)


def test_back_after_is_the_first_arrival_from_which_every_window_holds_the_share() -> None:
    deliveries = _served([(20, 23, "mid"), (23, 60, "cheap")])
    # The window from 22 s holds 22 and 22.5 (mid) and eight of cheap's: 80%.
    assert back_after(deliveries, "cheap", 20, 60, 0.8) == 2.0
    assert back_after(deliveries, "cheap", 20, 60, 0.81) == 2.5


def test_a_later_dip_restarts_the_clock_and_a_host_that_never_returns_is_never_back() -> None:
    dipped = _served([(20, 23, "mid"), (23, 40, "cheap"), (40, 42.5, "mid"), (42.5, 60, "cheap")])
    # From 41.5 s the window holds two mid and eight cheap (80%); from 41 s, three mid.
    assert back_after(dipped, "cheap", 20, 60, 0.8) == 21.5
    assert back_after(_served([(20, 60, "mid")]), "cheap", 20, 60, 0.8) is None
    # Failed requests are not deliveries: a window with none is no share at all.
    assert back_after(_served([(20, 60, None)]), "cheap", 20, 60, 0.8) is None


def test_recoveries_read_the_usual_share_from_the_calm_phase() -> None:
    cheap = Backend("cheap", Decimal("0.03"), 0.4, 0.0, events=(Event("down", 10, 20),))
    dear = Backend("dear", Decimal("0.08"), 0.2, 0.0, events=(Event("slow", 30, 40, factor=4),))
    run = RouterRun("cheapest", _served([(0, 10, "cheap"), (10, 24, "dear"), (24, 50, "cheap")]),
                    (), {})
    phases = split((cheap, dear), 50)
    back, slow = recoveries(run, (cheap, dear), phases)
    assert (back.backend, back.usual, back.applicable, back.seconds) == ("cheap", 1.0, True, 3.0)
    assert (slow.backend, slow.usual, slow.applicable, slow.seconds) == ("dear", 0.0, False,
                                                                         None)


def test_hang_exits_count_only_ordinary_calls_during_the_hang() -> None:
    cheap = Backend("cheap", Decimal("0.03"), 0.4, 0.0, events=(Event("hang", 10, 50),))
    calls = (Call(9.0, 9.4, "cheap", 0, "200", "closed"),
             Call(11.0, 12.0, "cheap", 1, "cancelled", "closed"),
             Call(16.5, 17.0, "cheap", 2, "cancelled", "closed"),
             Call(30.0, 40.0, "cheap", 3, "timeout", "half_open"),
             Call(31.0, 31.3, "mid", 3, "200", "closed"))
    (found,) = hang_exits(RouterRun("cheapest+hedge", (), calls, {}), (cheap,))
    assert (found.ordinary, found.last_s) == (2, 6.5)


# --- the targets' verdicts -----------------------------------------------------------------

CALM = Phase("calm", 0, 60)
SHORT = Phase("after-x", 60, 80)
DOWN = Phase("cheap-down", 80, 140, (("cheap", Event("down", 80, 140)),))


def _row(run: str, phase: Phase, cost: float, p95: float, oracle_cost: float = 0.03,
         oracle_p95: float = 0.2) -> Row:
    return Row(run, phase, Figures(100, 1.0, cost, p95), Figures(100, 1.0, oracle_cost, 0.5),
               Figures(100, 1.0, 0.08, oracle_p95))


def test_the_phase_cost_target_fails_on_a_long_phase_and_skips_a_short_one() -> None:
    met = phase_targets.cheapest_phase_cost([_row("cheapest", CALM, 0.0327, 1.0),
                                             _row("cheapest", SHORT, 0.06, 1.0)])
    assert met.verdict == "MET" and [c.passed for c in met.checks] == [True, None]
    missed = phase_targets.cheapest_phase_cost([_row("cheapest", CALM, 0.0331, 1.0)])
    assert missed.verdict == "MISSED" and "+10.33%" in missed.checks[0].figure
    assert phase_targets.cheapest_phase_cost([_row("cheapest", SHORT, 0.03, 1.0)]).verdict == \
        "n/a"


def test_the_whole_schedule_cost_target_is_judged_unrounded() -> None:
    assert phase_targets.cheapest_cost(_row("cheapest", CALM, 0.03089, 1.0)).verdict == "MET"
    # +3.003% is over the 3%, and is printed so, not rounded to +3.00%.
    missed = phase_targets.cheapest_cost(_row("cheapest", CALM, 0.030901, 1.0))
    assert missed.verdict == "MISSED" and "(+3.003%)" in missed.checks[0].figure


def test_the_p95_target_fails_in_any_phase() -> None:
    target = phase_targets.fastest_p95([_row("fastest", CALM, 0.08, 0.21),
                                        _row("fastest", DOWN, 0.08, 0.23)])
    assert target.verdict == "MISSED" and [c.passed for c in target.checks] == [True, False]
    nothing = phase_targets.fastest_p95([_row("fastest", CALM, 0.08, math.nan)])
    assert nothing.verdict == "MISSED"  # nothing delivered is no pass


def test_the_hedged_cost_target_ignores_disturbed_phases() -> None:
    rows = [_row("cheapest", CALM, 0.030, 1), _row("cheapest+hedge", CALM, 0.0329, 1),
            _row("cheapest", DOWN, 0.050, 1), _row("cheapest+hedge", DOWN, 0.080, 1)]
    target = phase_targets.hedged_cost(rows)
    assert target.verdict == "MET" and len(target.checks) == 1
    rows[1] = _row("cheapest+hedge", CALM, 0.0331, 1)
    assert phase_targets.hedged_cost(rows).verdict == "MISSED"


def test_the_success_hang_and_recovery_targets_can_fail() -> None:
    assert phase_targets.success({"a": (0.999, 1000), "b": (1.0, 1000)}).verdict == "MET"
    assert phase_targets.success({"a": (0.9989, 1000)}).verdict == "MISSED"
    hang = Event("hang", 180, 220)
    assert phase_targets.hang_exit([HangExit("x+hedge", "cheap", hang, 3, 5.0),
                                    HangExit("y+hedge", "cheap", hang, 0, None)]
                                   ).verdict == "MET"
    assert phase_targets.hang_exit([HangExit("x+hedge", "cheap", hang, 9, 5.01)]
                                   ).verdict == "MISSED"
    down = Event("down", 60, 120)
    assert phase_targets.recovery([Recovery("x", "cheap", down, 0.9, 10.0),
                                   Recovery("x", "dear", down, 0.01, None)]).verdict == "MET"
    never = phase_targets.recovery([Recovery("x", "cheap", down, 0.9, None)])
    assert never.verdict == "MISSED" and "never" in never.checks[0].figure
    not_applicable = phase_targets.recovery([Recovery("x", "dear", down, 0.01, None)])
    assert not_applicable.verdict == "n/a" and "n/a" in not_applicable.checks[0].figure


# --- a short run of the whole hangs market ------------------------------------------------


def test_a_short_hangs_run_reports_every_phase_of_every_run_and_judges_every_target() -> None:
    # 450 s: the shortest phase lasts 30 s, so every target has something to judge.
    audit = hangs.measure(seed=2, duration_s=450, rate=1.0, workers=1)
    assert [r.name for r in audit.runs] == ["cheapest", "fastest", "balanced", "ordered",
                                            "cheapest+hedge", "fastest+hedge",
                                            "balanced+hedge", "ordered+hedge"]
    lines = phase_report.render(audit, wall_s=1.0).splitlines()
    phase_heads = [line for line in lines if line.split(" ")[0] in
                   {p.name for p in audit.phases} and "cost oracle" in line]
    assert len(phase_heads) == len(audit.phases) == 9
    for phase in audit.phases:
        start = lines.index(next(h for h in phase_heads if h.startswith(f"{phase.name} ")))
        assert [line.split()[0] for line in lines[start + 1:start + 9]] == \
            [r.name for r in audit.runs]
    targets = [line for line in lines if line[:7].rstrip() in ("MET", "MISSED", "n/a")]
    assert len(targets) == 7
    assert all(line.startswith(("MET ", "MISSED ")) for line in targets)
    assert any(line.startswith("MISSED ") for line in targets)  # today's router: see issue 20
    recovery = lines.index(next(line for line in lines if line.startswith("Recovery ")))
    assert [line.split()[0] for line in lines[recovery + 1:recovery + 9]] == \
        [r.name for r in audit.runs]
