"""`switchyard bench cache`: what the response cache saves on a workload that repeats seeds.

A team re-renders the same seeded prompts (thumbnails for a catalog, a storyboard retried, a
CI job that regenerates fixtures): `requests` requests drawn from `distinct` (prompt, seed)
pairs, the popular ones more often (Zipf, s = 1.1), eight at a time. The same workload runs
through the real app and billing twice, on the demo catalog's simulated hosts (they honour
seeds): once with the cache off and once with its default for seeded requests. Printed:
upstream calls, hits, coalesced requests, and upstream and billed dollars per image.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from proxy.billing.store import Store
from proxy.config import Config, load

CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Outcome:
    requests: int
    images: int
    calls: int  # requests that reached a host
    hits: int
    coalesced: int
    upstream_usd: Decimal
    billed_usd: Decimal

    def line(self, label: str) -> str:
        per = max(self.images, 1)
        return (f"{label:<14}{self.requests:>9}{self.calls:>7}{self.hits:>7}"
                f"{self.coalesced:>11}{self.upstream_usd / per:>16.4f}"
                f"{self.billed_usd / per:>14.4f}")


def workload(requests: int, distinct: int, seed: int) -> list[tuple[str, int]]:
    """(prompt, seed) pairs, the popular ones repeated (Zipf, s = 1.1)."""
    rng = random.Random(seed)
    pool = [(f"product shot {i}, studio light", 1000 + i) for i in range(distinct)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(distinct)]
    return rng.choices(pool, weights, k=requests)


def add_command(bench: Any) -> None:
    """`switchyard bench cache` on the CLI's bench subcommands."""
    parser = bench.add_parser("cache", help=(
        "a workload that repeats seeded prompts, with the response cache off and on: "
        "upstream calls, hits and cost per image"))
    parser.add_argument("--requests", type=int, default=400, help="default 400")
    parser.add_argument("--distinct", type=int, default=60,
                        help="distinct (prompt, seed) pairs (default 60)")
    parser.set_defaults(run=_command, config=None, data_dir=None)


def _command(config: Config | None, args: argparse.Namespace) -> int:
    print(main(args.requests, args.distinct))
    return 0


async def _run(config: Config, asks: list[tuple[str, int]]) -> Outcome:
    from proxy.app import build_app  # the server's wiring: only when the benchmark runs

    app = build_app(config)
    with Store(config.database) as store:
        key = store.create_key("bench-cache")[1]
    headers = {"authorization": f"Bearer {key}"}
    gate = asyncio.Semaphore(CONCURRENCY)
    said: list[str] = []

    async def one(client: httpx.AsyncClient, prompt: str, seed: int) -> None:
        async with gate:
            reply = await client.post("/v1/images/generations", headers=headers, json={
                "model": "demo-image", "prompt": prompt, "seed": seed, "size": "1024x1024"})
            reply.raise_for_status()
            said.append(reply.headers.get("x-switchyard-cache", "none"))

    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench",
            timeout=120) as client:
        await asyncio.gather(*(one(client, prompt, seed) for prompt, seed in asks))
    with Store(config.database) as store:
        (row,) = store.usage.report([])
    return Outcome(len(asks), row.images, len(asks) - said.count("hit") -
                   said.count("coalesced"), said.count("hit"), said.count("coalesced"),
                   row.upstream_usd, row.billed_usd)


def main(requests: int = 400, distinct: int = 60, seed: int = 7,
         time_scale: float = 0.02) -> str:
    asks = workload(requests, distinct, seed)
    outcomes = []
    for label, seed_ttl in (("cache off", 0), ("cache on", 3600)):
        with tempfile.TemporaryDirectory() as data:
            config = load(env={}, data_dir=Path(data), demo=True,
                          simulation_time_scale=time_scale, cache_seed_ttl_s=seed_ttl)
            outcomes.append((label, asyncio.run(_run(config, asks))))
    (_, off), (_, on) = outcomes
    saved = 1 - on.upstream_usd / off.upstream_usd if off.upstream_usd else Decimal(0)
    lines = [f"Response cache: {requests} seeded requests over {distinct} distinct "
             f"(prompt, seed) pairs (Zipf 1.1), {CONCURRENCY} at a time, demo-image at 1K",
             f"{'':<14}{'requests':>9}{'calls':>7}{'hits':>7}{'coalesced':>11}"
             f"{'upstream $/img':>16}{'billed $/img':>14}",
             *(outcome.line(label) for label, outcome in outcomes),
             f"upstream cost per image {saved:.0%} lower with the cache (hits are billed at "
             f"the plan's price, $0 upstream: the default plan passes the saved call's "
             f"price on)"]
    return "\n".join(lines)
