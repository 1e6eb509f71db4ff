"""`switchyard bench routing`: build the scenario, run every contender, print the report."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from proxy.bench import oracle, report, runner, scenario

STRATEGIES: tuple[str, ...] = ("cheapest", "fastest", "balanced", "ordered")
DEFAULT_SEED = 1
DEFAULT_DURATION_S = 3600.0
DEFAULT_RATE = 2.0  # requests per second


def measure(seed: int = DEFAULT_SEED, duration_s: float = DEFAULT_DURATION_S,
            rate: float = DEFAULT_RATE, workers: int | None = None) -> report.Results:
    """Every strategy through a fresh router, both oracles and every single-provider
    baseline, on one scenario. Strategies run in `workers` processes (default: one per CPU);
    each run is independent and deterministic, so this changes only the wall time."""
    market = scenario.build(seed, duration_s, rate)
    runs = run_all(market, [(strategy, False) for strategy in STRATEGIES], workers)
    return report.Results(
        market, seed, runs, oracle.oracle(market, oracle.by_cost),
        oracle.oracle(market, oracle.by_latency),
        {b.name: oracle.single(market, b.name) for b in market.backends})


def run_all(market: scenario.Scenario, runs: Sequence[tuple[str, bool]],
            workers: int | None = None) -> tuple[runner.RouterRun, ...]:
    """Each (strategy, hedge) through a fresh router, in `workers` processes (default: one
    per CPU), results in the order asked."""
    workers = workers or os.cpu_count() or 1
    strategies = [strategy for strategy, _ in runs]
    hedges = [hedge for _, hedge in runs]
    if workers <= 1:
        return tuple(map(runner.run, [market] * len(runs), strategies, hedges))
    # spawn, not fork: the caller may have threads (a test server), which fork would copy
    # mid-flight.
    with ProcessPoolExecutor(min(workers, len(runs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return tuple(pool.map(runner.run, [market] * len(runs), strategies, hedges))


def main(seed: int = DEFAULT_SEED, duration_s: float = DEFAULT_DURATION_S,
         rate: float = DEFAULT_RATE) -> str:
    """The printed report, wall time included."""
    started = time.perf_counter()
    results = measure(seed, duration_s, rate)
    return report.render(results, time.perf_counter() - started)
