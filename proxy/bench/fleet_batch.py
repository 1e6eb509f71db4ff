"""The fleet benchmark's batch: `bench batch`'s market (proxy/bench/batch.py: four hosts with
caps and realistic latencies on a fast clock) on loopback sockets, and one batch through a fleet
of replicas, then the same batch through one single-process replica on fresh hosts.

The batch goes in through replica 0's Batch API; every replica's job worker claims its items
from the shared PostgreSQL queue, bounded by the slots the fleet has free in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from proxy.bench import batch, procs
from proxy.bench.batch_hosts import Host
from proxy.bench.fleet_procs import Setting, fallbacks, replicas, say
from proxy.bench.loopback import TransportHost, on_own_loop

SEED = 1


@dataclass(frozen=True, slots=True)
class Plan:
    root: Path  # where catalogs and data directories go
    key: str  # a key in the shared database
    items: int
    time_scale: float
    replicas: int  # in the fleet run


@dataclass(frozen=True, slots=True)
class BatchRun:
    mode: str  # "fleet" or "single"
    replicas: int
    outcome: batch.Outcome
    replicas_cpu_s: float
    fallbacks: int  # times a fleet replica turned to its own state during the batch

    @property
    def share(self) -> float:
        """Throughput over what the caps allow."""
        return self.outcome.throughput / self.outcome.allowed()

    @property
    def over_cap(self) -> list[str]:
        return [h.spec.name for h in self.hosts if h.peak > h.spec.cap]

    @property
    def hosts(self) -> list[Host]:
        return [h for h in self.outcome.hosts if isinstance(h, Host)]


@contextlib.contextmanager
def market(time_scale: float) -> Iterator[list[tuple[Host, int]]]:
    """batch.MARKET's hosts, each served on a socket by a thread of its own: (host, port)."""
    with contextlib.ExitStack() as stack:
        served = []
        for i, spec in enumerate(batch.MARKET):
            host = Host(spec, time_scale, SEED + i)
            server = TransportHost(host)
            stack.enter_context(on_own_loop(server))
            served.append((host, server.port))
        yield served


def run(plan: Plan, setting: Setting, count: int, name: str) -> BatchRun:
    """One batch of plan.items through `count` replicas in `setting`, on fresh hosts."""
    say(f"batch of {plan.items} items through {count} {setting.mode['mode']} replica(s)")
    with market(plan.time_scale) as served:
        routes = plan.root / f"routes-{name}"
        batch.write_routes(routes, batch.MARKET, plan.time_scale, {
            host.spec.name: f"http://127.0.0.1:{port}" for host, port in served})
        with replicas(routes, plan.root, count, setting, name,
                      {batch.KEY_ENV: "bench-upstream"}) as servers:
            pids = [s.pid for s in servers]
            cpu = sum(procs.cpu_seconds(p) for p in pids)
            started, completed_s, succeeded = asyncio.run(_batch(servers[0].base_url, plan))
            cpu_s = sum(procs.cpu_seconds(p) for p in pids) - cpu
            fell_back = fallbacks(servers) if setting.redis_url else 0
        hosts = tuple(host for host, _ in served)
        last = max(h.last_answer for h in hosts)
        outcome = batch.Outcome(plan.items, succeeded, last - started, completed_s, cpu_s, hosts)
    return BatchRun(setting.mode["mode"], count, outcome, cpu_s, fell_back)


async def _batch(base_url: str, plan: Plan) -> tuple[float, float, int]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 headers={"authorization": f"Bearer {plan.key}"}) as http:
        file_id = await batch.upload(http, plan.items)
        return await batch.complete(http, file_id, plan.items, progress=False)


def measure(plan: Plan, fleet: Setting, single: Setting) -> tuple[BatchRun, ...]:
    """The fleet's batch, then one process's (one after the other: they share the queue)."""
    return (run(plan, fleet, plan.replicas, "batch-fleet"),
            run(plan, single, 1, "batch-single"))
