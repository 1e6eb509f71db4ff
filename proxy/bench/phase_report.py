"""The hangs market's printed report: per phase, every run beside the oracles; the recoveries;
issue 20's targets, each MET or MISSED with its figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.bench import phase_targets as targets
from proxy.bench.phases import (
    MIN_USUAL_SHARE,
    SHARE_BACK,
    SHARE_WINDOW_S,
    Phase,
    Recovery,
    Row,
    hang_exits,
    recoveries,
    rows,
)
from proxy.bench.report import describe

if TYPE_CHECKING:
    from proxy.bench.hangs import Audit

LEGEND = (
    "  success: share of the phase's requests (by arrival) delivered. $/image: billed, lost",
    "    hedges included, over images delivered. p95: arrival to delivery, delivered requests.",
    "  vs oracle: against the cost oracle's $/image, or the latency oracle's p95, for the same",
    "    requests. The oracles know every host's true state (future included; a down or hung",
    "    host ranks last) but not each call's luck, and fail over like the router on the same",
    "    dice. +hedge: the same strategy with hedging on (a second attempt past the first",
    "    route's p95).",
    f"  Recovery: seconds from a host's recovery to the first arrival from which every "
    f"{SHARE_WINDOW_S:g} s",
    f"    window of arrivals, until the next event, gives it >= {SHARE_BACK:.0%} of its usual "
    "share (its",
    f"    share in that run's first calm phase); n/a where that is under {MIN_USUAL_SHARE:.0%}.",
)


def render(audit: Audit, wall_s: float) -> str:
    every = [row for run in audit.runs
             for row in rows(run, audit.phases, audit.cost_oracle, audit.latency_oracle)]
    found = [r for run in audit.runs
             for r in recoveries(run, audit.scenario.backends, audit.phases)]
    lines = [*_scenario_lines(audit), "", *_phase_table(audit, every), "", *LEGEND, "",
             *_recovery_table(found), "", "Targets (issue 20)"]
    for target in _targets(audit, every, found):
        lines.append(f"{target.verdict:<7}{target.claim}")
        lines += [f"  {_check_verdict(c.passed):<7}{c.subject:<23} {c.figure}"
                  for c in target.checks]
    lines += ["", f"wall time {wall_s:.1f} s"]
    return "\n".join(lines)


def _check_verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("MET" if passed else "MISSED")


def _scenario_lines(audit: Audit) -> list[str]:
    s = audit.scenario
    lines = [f"Hangs benchmark (issue 20's audit): seed {audit.seed}, {s.duration_s:g} virtual s,"
             f" {len(s.arrivals)} requests (Poisson, {audit.rate:g}/s), request deadline "
             f"{s.deadline_s:g} s, provider read timeout {s.read_timeout_s():g} s; the real "
             "Router per strategy, hedging off and on, on a virtual clock", "Hosts (true "
             "behaviour; a hung host answers nothing, so each call waits out the read timeout):"]
    lines += [f"  {describe(b)}" for b in s.backends]
    peaks = {b.name: max(r.peak_in_flight[b.name] for r in audit.runs) for b in s.backends}
    verdict = "no host reached it" if max(peaks.values()) < s.max_in_flight \
        else "SATURATED: some requests were turned away for a slot"
    lines.append(f"max_in_flight {s.max_in_flight} per host; peak in flight over all runs: "
                 + ", ".join(f"{n} {p}" for n, p in peaks.items()) + f" ({verdict})")
    return lines


def _phase_table(audit: Audit, every: Sequence[Row]) -> list[str]:
    lines = [f"{'Per phase':<18}{'requests':>9}{'success':>9}{'$/image':>10}"
             f"{'vs oracle':>11}{'p95 s':>8}{'vs oracle':>11}"]
    for phase in audit.phases:
        mine = [r for r in every if r.phase == phase]
        head = mine[0]
        lines.append(f"{_span(phase)}: cost oracle {head.cost_oracle.cost_per_image:.5f} $/image,"
                     f" latency oracle p95 {head.latency_oracle.p95_s:.3f} s"
                     + (f" ({_troubles(phase)})" if phase.troubles else ""))
        lines += [f"  {r.run:<16}{r.own.requests:>9}{_share(r.own.success):>9}"
                  f"{r.own.cost_per_image:>10.5f}{r.cost_over:>+11.2%}{r.own.p95_s:>8.3f}"
                  f"{r.p95_over:>+11.2%}" for r in mine]
    return lines


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2%}"


def _span(phase: Phase) -> str:
    return f"{phase.name} {phase.start_s:g}-{phase.end_s:g} s"


def _troubles(phase: Phase) -> str:
    return ", ".join(f"{backend} {e.kind}" + ("" if e.kind in ("down", "hang")
                                              else f" x{e.factor:g}")
                     for backend, e in phase.troubles)


def _recovery_table(found: Sequence[Recovery]) -> list[str]:
    events = list(dict.fromkeys((r.backend, r.event) for r in found))
    if not events:
        return ["Recovery: no host recovers from an outage, a hang or a slow spell here"]
    width = 27
    lines = [(f"{'Recovery':<18}" + "".join(
        f"{f'{backend} after {e.kind} {e.end_s:g} s':<{width}}" for backend, e in events)
              ).rstrip()]
    for run in dict.fromkeys(r.run for r in found):
        cells = []
        for backend, event in events:
            r = next(x for x in found if x.run == run and x.backend == backend
                     and x.event == event)
            took = "n/a" if not r.applicable else \
                ("never" if r.seconds is None else f"{r.seconds:.1f} s")
            cells.append(f"{f'{took} (usual {r.usual:.1%})':<{width}}")
        lines.append((f"  {run:<16}" + "".join(cells)).rstrip())
    return lines


def _targets(audit: Audit, every: Sequence[Row],
             found: Sequence[Recovery]) -> list[targets.Target]:
    s = audit.scenario
    shares = {}
    for run in audit.runs:
        counted = [d for d in run.deliveries if s.healthy_at(d.arrival)]
        shares[run.name] = (sum(d.ok for d in counted) / len(counted) if counted else math.nan,
                            len(counted))
    whole = Phase("whole", 0.0, s.duration_s)
    result = [targets.success(shares)]
    cheapest = next((r for r in audit.runs if r.name == "cheapest"), None)
    if cheapest is not None:
        (row,) = rows(cheapest, (whole,), audit.cost_oracle, audit.latency_oracle)
        result += [targets.cheapest_cost(row),
                   targets.cheapest_phase_cost([r for r in every if r.run == "cheapest"])]
    result += [targets.fastest_p95([r for r in every if r.run == "fastest"]),
               targets.hedged_cost(every),
               targets.hang_exit([e for run in audit.runs if run.name.endswith(targets.HEDGED)
                                  for e in hang_exits(run, s.backends)]),
               targets.recovery(found)]
    return result
