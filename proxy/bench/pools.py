"""The `pools` market: what a key pool (issue 22.1, proxy/key_pools.py) saves.

A cheap host lets each key start a few calls a second (past that: 429, Retry-After 1 s), as
hosts' per-account rate limits do; a dearer one has no such limit. The same requests (same
seed, same dice) go through the real Router with `cheapest`, once with one key for the cheap
host and once with a pool of three: with one key the limit sends most traffic to the dearer
host, with three the cheap host takes nearly all of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from decimal import Decimal

from proxy.bench import routing, scenario
from proxy.bench.report import percentile
from proxy.bench.runner import RouterRun
from proxy.bench.scenario import Backend, Scenario

NAME = "pools"
DEFAULT_DURATION_S = 300.0
DEFAULT_RATE = 16.0  # requests per second
KEY_RPS = 10.0  # calls each key of the cheap host may start per second (demand: 16)
POOL = 3  # keys in the pool
STRATEGY = "cheapest"


def backends(keys: int) -> tuple[Backend, ...]:
    return (Backend("cheap", Decimal("0.03"), 0.40, 0.25, keys=keys, key_rps=KEY_RPS),
            Backend("mid", Decimal("0.05"), 0.30, 0.25))


def build(seed: int, duration_s: float, rate: float, keys: int) -> Scenario:
    """The same arrivals and dice whatever the number of keys (the dice are drawn per
    backend, and the backends are the same two)."""
    return replace(scenario.build(seed, duration_s, rate, backends(keys)), deadline_s=60.0,
                   provider_timeout_s=10.0)


@dataclass(frozen=True, slots=True)
class Row:
    keys: int
    requests: int
    delivered: int
    cost_per_image: float
    p95_s: float
    cheap_share: float  # of deliveries
    limited: int  # the cheap host's 429s

    def line(self) -> str:
        return (f"  {self.keys} key{'s' if self.keys > 1 else ' '}  {self.requests:>8}"
                f"  {self.delivered / max(1, self.requests):>8.2%}"
                f"  {self.cost_per_image:>9.5f}  {self.p95_s:>6.3f}"
                f"  {self.cheap_share:>11.1%}  {self.limited:>6}")


def summarize(keys: int, run: RouterRun) -> Row:
    delivered = [d for d in run.deliveries if d.ok]
    images = sum(d.images for d in delivered)
    cost = sum((d.cost for d in run.deliveries), Decimal(0))
    latencies = sorted(d.latency_s for d in delivered)
    cheap = sum(1 for d in delivered if d.served_by and d.served_by.startswith("cheap"))
    limited = sum(1 for c in run.calls if c.backend == "cheap" and c.outcome == "429")
    return Row(keys, len(run.deliveries), len(delivered),
               float(cost) / images if images else float("nan"),
               percentile(latencies, 0.95), cheap / max(1, len(delivered)), limited)


def measure(seed: int = routing.DEFAULT_SEED, duration_s: float = DEFAULT_DURATION_S,
            rate: float = DEFAULT_RATE) -> tuple[Row, Row]:
    one, pooled = (build(seed, duration_s, rate, keys) for keys in (1, POOL))
    (run_one,) = routing.run_all(one, [(STRATEGY, False)], 1)
    (run_pooled,) = routing.run_all(pooled, [(STRATEGY, False)], 1)
    return summarize(1, run_one), summarize(POOL, run_pooled)


def main(seed: int = routing.DEFAULT_SEED, duration_s: float = DEFAULT_DURATION_S,
         rate: float = DEFAULT_RATE) -> str:
    started = time.perf_counter()
    one, pooled = measure(seed, duration_s, rate)
    saved = 1 - pooled.cost_per_image / one.cost_per_image
    return "\n".join([
        f"Key pools benchmark (issue 22.1): seed {seed}, {duration_s:g} virtual s, {rate:g} "
        f"requests/s, the real Router with {STRATEGY} on a virtual clock",
        f"Hosts: cheap $0.03 median 0.4 s, each key may start {KEY_RPS:g} calls a second "
        f"(past it: 429, Retry-After 1 s); mid $0.05 median 0.3 s, no limit",
        "",
        "  keys     requests  success   $/image  p95 s  cheap share     429s",
        one.line(), pooled.line(),
        "",
        f"A pool of {POOL} keys: {pooled.cost_per_image:.5f} $/image against "
        f"{one.cost_per_image:.5f} with one key, "
        + (f"{saved:.1%} saved" if saved >= 0 else f"{-saved:.1%} more")
        + f"; p95 {pooled.p95_s:.3f} s against {one.p95_s:.3f} s.",
        f"wall time {time.perf_counter() - started:.1f} s",
    ])
