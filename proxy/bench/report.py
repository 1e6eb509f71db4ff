"""The routing benchmark's printed report: the scenario, one row per contender, the targets.

Latency percentiles are over delivered requests (nearest rank); cost per delivered image is
everything billed (lost hedges included) over the images delivered.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from proxy.bench import outage
from proxy.bench.runner import RouterRun
from proxy.bench.scenario import Backend, Delivery, Scenario

# The targets of issue 5.
MIN_SUCCESS = 0.999
MAX_COST_OVER_ORACLE = 0.03
MAX_P95_OVER_ORACLE = 0.10
MAX_FAILED_BEFORE_AVOIDED = 5
MAX_SECONDS_BEFORE_AVOIDED = 10.0
MAX_SECONDS_TO_RECOVER = 60.0


@dataclass(frozen=True, slots=True)
class Results:
    """Everything the benchmark measured, ready to print."""

    scenario: Scenario
    seed: int
    runs: tuple[RouterRun, ...]  # cheapest and fastest among them
    cost_oracle: tuple[Delivery, ...]
    latency_oracle: tuple[Delivery, ...]
    singles: dict[str, tuple[Delivery, ...]]  # by backend name


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    requests: int
    success: float  # share of requests delivered
    cost_per_image: float  # USD; nan when nothing was delivered
    p50_s: float
    p95_s: float


def summarize(name: str, deliveries: Sequence[Delivery]) -> Row:
    delivered = [d for d in deliveries if d.ok]
    images = sum(d.images for d in delivered)
    cost = sum((d.cost for d in deliveries), Decimal(0))
    latencies = sorted(d.latency_s for d in delivered)
    return Row(name, len(deliveries), len(delivered) / len(deliveries) if deliveries else 0.0,
               float(cost) / images if images else math.nan,
               percentile(latencies, 0.50), percentile(latencies, 0.95))


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values; nan when there are none."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def render(results: Results, wall_s: float) -> str:
    lines = _scenario_lines(results)
    rows = [summarize(f"router: {r.name}", r.deliveries) for r in results.runs]
    rows += [summarize("oracle: cost", results.cost_oracle),
             summarize("oracle: latency", results.latency_oracle)]
    rows += [summarize(f"always {name}", d) for name, d in results.singles.items()]
    lines += ["", *_table(rows), "", *LEGEND, "", "Deliveries by backend:",
              *(_shares(run) for run in results.runs), "", "Targets",
              *_targets(results, rows), "", f"wall time {wall_s:.1f} s"]
    return "\n".join(lines)


LEGEND = (
    "  router: the real Router (hedging off), fresh health per strategy.",
    "  oracle: knows every backend's true state, future included, but not each call's luck;",
    "    ranks by price (cost) or by true median latency (latency), down backends last, and",
    "    fails over like the router on the same dice. always X: one backend, no failover.",
    "  Latency: arrival to delivery, over delivered requests. $/image: billed / delivered.",
)


def _shares(run: RouterRun) -> str:
    served = Counter(d.served_by for d in run.deliveries if d.ok)
    total = sum(served.values()) or 1
    return f"  {run.name:<10}" + ", ".join(f"{name} {count / total:.1%}"
                                          for name, count in served.most_common())


def _scenario_lines(results: Results) -> list[str]:
    s = results.scenario
    lines = [f"Routing benchmark: seed {results.seed}, {s.duration_s:g} virtual s, "
             f"{len(s.arrivals)} requests (Poisson), deadline {s.deadline_s:g} s, real Router "
             "per strategy on a virtual clock", "Backends (true behaviour):"]
    lines += [f"  {describe(b)}" for b in s.backends]
    peaks = {name: max(r.peak_in_flight[name] for r in results.runs)
             for name in (b.name for b in s.backends)}
    verdict = "no backend reached it" if max(peaks.values()) < s.max_in_flight \
        else "SATURATED: some requests were turned away for a slot"
    lines.append(f"max_in_flight {s.max_in_flight} per backend; peak in flight over all runs: "
                 + ", ".join(f"{n} {p}" for n, p in peaks.items()) + f" ({verdict})")
    return lines


def describe(backend: Backend) -> str:
    """A backend's price, latency, errors and events, on one line."""
    events = [f"{e.kind}{'' if e.kind in ('down', 'hang') else f' x{e.factor:g}'} "
              f"{e.start_s:g}-{e.end_s:g} s" for e in backend.events]
    limited = [e for e in backend.events if e.kind == "rate_limited"]
    after = f" (429s say Retry-After {limited[0].retry_after_s:g} s)" if limited else ""
    return (f"{backend.name:<8} ${backend.price} median {backend.median_s:g} s "
            f"(sigma {backend.sigma:g}), errors {backend.error_rate:.0%}"
            + (f"; {', '.join(events)}{after}" if events else ""))


def _table(rows: Sequence[Row]) -> list[str]:
    header = f"{'':<22}{'requests':>9}{'success':>10}{'$/image':>10}{'p50 s':>8}{'p95 s':>8}"
    return [header] + [
        f"{r.name:<22}{r.requests:>9}{r.success:>10.2%}{r.cost_per_image:>10.5f}"
        f"{r.p50_s:>8.2f}{r.p95_s:>8.2f}" for r in rows]


def _targets(results: Results, rows: Sequence[Row]) -> list[str]:
    by_name = {r.name: r for r in rows}
    lines = [_success_target(results)]
    cheapest, cost_oracle = by_name.get("router: cheapest"), by_name["oracle: cost"]
    if cheapest:
        over = cheapest.cost_per_image / cost_oracle.cost_per_image - 1
        lines.append(f"{_verdict(over <= MAX_COST_OVER_ORACLE)} cheapest $/image within "
                     f"{MAX_COST_OVER_ORACLE:.0%} of the cost oracle: {cheapest.cost_per_image:.5f}"
                     f" vs {cost_oracle.cost_per_image:.5f} ({over:+.1%})")
    fastest, latency_oracle = by_name.get("router: fastest"), by_name["oracle: latency"]
    if fastest:
        over = fastest.p95_s / latency_oracle.p95_s - 1
        lines.append(f"{_verdict(over <= MAX_P95_OVER_ORACLE)} fastest p95 within "
                     f"{MAX_P95_OVER_ORACLE:.0%} of the latency oracle: {fastest.p95_s:.2f} s vs "
                     f"{latency_oracle.p95_s:.2f} s ({over:+.1%})")
    return lines + _outage_targets(results)


def _success_target(results: Results) -> str:
    scenario = results.scenario
    shares = []
    for run in results.runs:
        counted = [d for d in run.deliveries if scenario.healthy_at(d.arrival)]
        shares.append((run.name, sum(d.ok for d in counted) / len(counted) if counted else 1.0))
    passed = all(share >= MIN_SUCCESS for _, share in shares)
    return (f"{_verdict(passed)} success >= {MIN_SUCCESS:.1%} of requests arriving while a "
            "backend is up: " + ", ".join(f"{name} {share:.2%}" for name, share in shares))


def _outage_targets(results: Results) -> list[str]:
    run = next((r for r in results.runs if r.name == "cheapest"), None)
    if run is None:
        return []
    lines = []
    for backend in results.scenario.backends:
        for event in (e for e in backend.events if e.kind == "down"):
            found = outage.analyse(run, backend.name, event)
            lines += _outage_lines(found)
    return lines


def _outage_lines(found: outage.Outage) -> list[str]:
    avoided = (found.failed_ordinary <= MAX_FAILED_BEFORE_AVOIDED
               or found.avoided_after_s <= MAX_SECONDS_BEFORE_AVOIDED)
    probes = ", ".join(f"{c.started - found.event.start_s:.0f}" for c in found.probes)
    failed = sum(1 for c in found.probes if not c.ok)
    back = found.first_success_s is not None and found.majority_s is not None \
        and max(found.first_success_s, found.majority_s) <= MAX_SECONDS_TO_RECOVER
    return [
        f"{_verdict(avoided)} {found.backend} down at {found.event.start_s:g} s is avoided after "
        f"<= {MAX_FAILED_BEFORE_AVOIDED} failed requests or {MAX_SECONDS_BEFORE_AVOIDED:g} s "
        f"(cheapest): {found.failed_ordinary} failed calls, breaker open "
        f"{found.avoided_after_s:.1f} s after the outage began",
        f"       then {len(found.probes)} half-open probes ({failed} failed) at "
        f"+[{probes}] s",
        f"{_verdict(back)} {found.backend} gets traffic back within "
        f"{MAX_SECONDS_TO_RECOVER:g} s of recovering at {found.event.end_s:g} s (cheapest): "
        f"first delivery {_seconds(found.first_success_s)} after; it served most requests "
        f"arriving within {outage.WINDOW_S:g} s from {_seconds(found.majority_s)} after",
    ]


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"
