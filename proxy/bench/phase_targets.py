"""Issue 20's targets, judged on per-phase figures: each target is a claim and its checks.

Every check keeps its exact figures and is judged on them unrounded; a target is MET only when
no check MISSED and at least one applied (a target with nothing to judge says n/a, never MET).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proxy.bench.phases import HangExit, Recovery, Row

MIN_SUCCESS = 0.999
MAX_COST_OVER_ORACLE = 0.03  # cheapest, the whole schedule
MAX_PHASE_COST_OVER_ORACLE = 0.10  # cheapest, each phase that lasts MIN_PHASE_S or more
MIN_PHASE_S = 30.0
MAX_P95_OVER_ORACLE = 0.10  # fastest, every phase
MAX_HEDGED_COST_OVER = 0.10  # hedged over unhedged, phases with no host slow, hung or down
MAX_HANG_EXIT_S = 5.0
MAX_RECOVERY_S = 10.0
HEDGED = "+hedge"


@dataclass(frozen=True, slots=True)
class Check:
    subject: str
    figure: str
    passed: bool | None  # None: not applicable


@dataclass(frozen=True, slots=True)
class Target:
    claim: str
    checks: tuple[Check, ...]

    @property
    def verdict(self) -> str:
        if any(c.passed is False for c in self.checks):
            return "MISSED"
        return "MET" if any(c.passed for c in self.checks) else "n/a"


def _pct(fraction: float, limit: float) -> str:
    """`fraction` as a signed percentage, with as many decimals as it takes for the printed
    figure to fall on the same side of `limit` as the exact one (+3.005% is no +3.00%)."""
    for digits in range(2, 9):
        shown = f"{fraction:+.{digits}%}"
        if math.isnan(fraction) or (float(shown[:-1]) / 100 <= limit) == (fraction <= limit):
            return shown
    return shown


def success(shares: Mapping[str, tuple[float, int]]) -> Target:
    """`shares`: per run, the share delivered of the requests arriving while a host was up,
    and how many those were."""
    return Target(
        f"success >= {MIN_SUCCESS:.1%} of requests arriving while some host is up",
        tuple(Check(run, f"{share:.2%} of {count}", share >= MIN_SUCCESS)
              for run, (share, count) in shares.items()))


def cheapest_cost(whole: Row) -> Target:
    return Target(
        f"cheapest $/image within {MAX_COST_OVER_ORACLE:.0%} of the cost oracle over the "
        "whole schedule",
        (Check(whole.run, _cost(whole, MAX_COST_OVER_ORACLE),
               whole.cost_over <= MAX_COST_OVER_ORACLE),))


def cheapest_phase_cost(rows: Sequence[Row]) -> Target:
    """`rows`: the cheapest run's, one per phase."""
    checks = []
    for row in rows:
        figure = _cost(row, MAX_PHASE_COST_OVER_ORACLE)
        if row.phase.length_s < MIN_PHASE_S:
            checks.append(Check(_phase(row), f"{figure}; lasts {row.phase.length_s:g} s", None))
        else:
            checks.append(Check(_phase(row), figure, row.cost_over <= MAX_PHASE_COST_OVER_ORACLE))
    return Target(f"cheapest $/image within {MAX_PHASE_COST_OVER_ORACLE:.0%} of the cost "
                  f"oracle in every phase of >= {MIN_PHASE_S:g} s", tuple(checks))


def _cost(row: Row, limit: float) -> str:
    return f"{row.own.cost_per_image:.5f} vs {row.cost_oracle.cost_per_image:.5f} " \
           f"({_pct(row.cost_over, limit)})"


def fastest_p95(rows: Sequence[Row]) -> Target:
    """`rows`: the fastest run's, one per phase."""
    checks = [Check(_phase(r), f"{r.own.p95_s:.3f} s vs {r.latency_oracle.p95_s:.3f} s "
                    f"({_pct(r.p95_over, MAX_P95_OVER_ORACLE)})",
                    r.p95_over <= MAX_P95_OVER_ORACLE) for r in rows]
    return Target(f"fastest p95 within {MAX_P95_OVER_ORACLE:.0%} of the latency oracle's p95 "
                  "in every phase", tuple(checks))


def hedged_cost(rows: Sequence[Row]) -> Target:
    """Every hedged run against its unhedged twin, in each phase where no host is slow, hung
    or down (hedging is allowed to cost there, within limits; elsewhere it is the cure)."""
    by_key = {(r.run, r.phase.start_s): r for r in rows}
    phases = sorted({r.phase for r in rows if not r.phase.disturbed}, key=lambda p: p.start_s)
    checks = []
    for phase in phases:
        parts, passed = [], True
        for row in (r for r in rows if r.phase == phase and r.run.endswith(HEDGED)):
            plain = by_key.get((row.run.removesuffix(HEDGED), phase.start_s))
            if plain is None:
                continue
            over = row.own.cost_per_image / plain.own.cost_per_image - 1
            parts.append(f"{plain.run} {_pct(over, MAX_HEDGED_COST_OVER)}")
            passed = passed and over <= MAX_HEDGED_COST_OVER
        if parts:
            checks.append(Check(_phase_of(phase.name, phase.start_s, phase.end_s),
                                ", ".join(parts), passed))
    return Target(f"hedged $/image within {MAX_HEDGED_COST_OVER:.0%} of unhedged (same "
                  "strategy) where no host is slow, hung or down", tuple(checks))


def hang_exit(exits: Sequence[HangExit]) -> Target:
    """`exits`: the hedged runs' (a hedge hides a hang from the failure count)."""
    checks = []
    for found in exits:
        what = f"{found.backend} hang at {found.event.start_s:g} s: "
        if found.last_s is None:
            checks.append(Check(found.run, what + "no ordinary call during it", True))
            continue
        checks.append(Check(found.run, what + f"{found.ordinary} ordinary calls, the last "
                            f"started +{found.last_s:.2f} s", found.last_s <= MAX_HANG_EXIT_S))
    return Target(f"a hung host out of hedged traffic within {MAX_HANG_EXIT_S:g} s (last "
                  "ordinary call, breaker closed, started on it)", tuple(checks))


def recovery(found: Sequence[Recovery]) -> Target:
    """One check per run, over all the recoveries that apply to its strategy."""
    checks = []
    for run in dict.fromkeys(r.run for r in found):
        mine = [r for r in found if r.run == run]
        applicable = [r for r in mine if r.applicable]
        passed = all(r.seconds is not None and r.seconds <= MAX_RECOVERY_S
                     for r in applicable) if applicable else None
        checks.append(Check(run, ", ".join(_recovered(r) for r in mine), passed))
    return Target(f"a recovered host back to >= 80% of its usual share within "
                  f"{MAX_RECOVERY_S:g} s", tuple(checks))


def _recovered(found: Recovery) -> str:
    what = f"{found.backend} after {found.event.kind}"
    if not found.applicable:
        return f"{what} n/a"
    return f"{what} " + ("never" if found.seconds is None else f"{found.seconds:.1f} s")


def _phase(row: Row) -> str:
    return _phase_of(row.phase.name, row.phase.start_s, row.phase.end_s)


def _phase_of(name: str, start: float, end: float) -> str:
    return f"{name} {start:g}-{end:g} s"
