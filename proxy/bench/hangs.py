"""The `hangs` market: issue 20's audit replayed in virtual time, every strategy hedged and not.

The audit drove three real hosts over HTTP through an outage, a hang (calls that never answer
until the client's 10 s read timeout), a slow spell and a 429 storm. Here the same hosts and
events play against the real Router, and every figure is read per phase (phases.py), since
what matters is what happens during each event and how fast traffic comes back after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from decimal import Decimal

from proxy.bench import oracle, phase_report, routing, scenario
from proxy.bench.phases import Phase, split
from proxy.bench.runner import RouterRun
from proxy.bench.scenario import Backend, Delivery, Event, Scenario

NAME = "hangs"
DEFAULT_DURATION_S = 600.0  # the events below are laid out over this; others scale them
DEFAULT_RATE = 16.0  # requests per second
DEADLINE_S = 60.0  # the router's request deadline
READ_TIMEOUT_S = 10.0  # each provider's: what ends a call to a hung host
# Far above this load's needs even while calls to a hung host wait out their 10 s, so the
# slots never decide where traffic goes (the report prints the peaks).
MAX_IN_FLIGHT = 512
RUNS: tuple[tuple[str, bool], ...] = tuple(
    (strategy, hedge) for hedge in (False, True) for strategy in routing.STRATEGIES)


def backends(duration_s: float = DEFAULT_DURATION_S) -> tuple[Backend, ...]:
    """cheap, mid, dear (the audit's prices and medians), with the audit's events at the same
    fractions of any duration as at 60-120 (cheap down), 180-220 (cheap hangs), 300-360 (dear
    four times slower) and 450-510 (60% of cheap's calls answered 429) of 600 s."""
    k = duration_s / DEFAULT_DURATION_S
    return (
        Backend("cheap", Decimal("0.03"), 0.40, 0.25, events=(
            Event("down", 60 * k, 120 * k), Event("hang", 180 * k, 220 * k),
            Event("rate_limited", 450 * k, 510 * k, factor=0.6, retry_after_s=5.0))),
        Backend("mid", Decimal("0.05"), 0.30, 0.25),
        Backend("dear", Decimal("0.08"), 0.15, 0.25,
                events=(Event("slow", 300 * k, 360 * k, factor=4.0),)),
    )


def build(seed: int, duration_s: float, rate: float) -> Scenario:
    return replace(scenario.build(seed, duration_s, rate, backends(duration_s)),
                   deadline_s=DEADLINE_S, provider_timeout_s=READ_TIMEOUT_S,
                   max_in_flight=MAX_IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class Audit:
    """Every run of the hangs market and its yardsticks."""

    scenario: Scenario
    seed: int
    rate: float
    phases: tuple[Phase, ...]
    runs: tuple[RouterRun, ...]  # RUNS' order: unhedged strategies, then hedged
    cost_oracle: tuple[Delivery, ...]
    latency_oracle: tuple[Delivery, ...]


def measure(seed: int = routing.DEFAULT_SEED, duration_s: float = DEFAULT_DURATION_S,
            rate: float = DEFAULT_RATE, workers: int | None = None) -> Audit:
    """Each strategy, hedging off and on, through a fresh router (in `workers` processes),
    and both oracles, on one scenario."""
    market = build(seed, duration_s, rate)
    return Audit(market, seed, rate, split(market.backends, market.duration_s),
                 routing.run_all(market, RUNS, workers),
                 oracle.oracle(market, oracle.by_cost), oracle.oracle(market, oracle.by_latency))


def main(seed: int = routing.DEFAULT_SEED, duration_s: float = DEFAULT_DURATION_S,
         rate: float = DEFAULT_RATE) -> str:
    """The printed report, wall time included."""
    started = time.perf_counter()
    audit = measure(seed, duration_s, rate)
    return phase_report.render(audit, time.perf_counter() - started)
