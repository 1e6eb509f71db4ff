"""The overhead benchmark's load: one httpx.AsyncClient with a pool, `concurrency` workers
sending a fixed number of requests, each request's latency recorded. The same client measures
the upstream directly and through Switchyard, so the direct figures bound what it can drive."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
import orjson

from proxy.bench.procs import MODEL, BenchError

PATH = "/v1/images/generations"


@dataclass(frozen=True, slots=True)
class Run:
    """One measured run: wall time, every latency (sorted), the client's CPU time."""

    wall_s: float
    latencies_s: tuple[float, ...]
    client_cpu_s: float

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_s, q)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def request_body(payload_chars: int) -> bytes:
    """A generation the proxy passes through untouched; the prompt picks the upstream body."""
    return orjson.dumps({"model": MODEL, "prompt": f"bench payload={payload_chars}",
                         "size": "1024x1024"})


class Target:
    """Where the load goes (the upstream or Switchyard), with its own pooled client."""

    def __init__(self, base_url: str, concurrency: int,
                 headers: Mapping[str, str] | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(300.0), verify=verify,
            headers={"content-type": "application/json", **(headers or {})},
            # Idle connections are dropped well before the server's 5 s keep-alive timeout:
            # one target idles while the other runs, and a connection reused just as the
            # server closes it fails the run with a ReadError.
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency, keepalive_expiry=2.0))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def one(self, body: bytes, min_bytes: int) -> bytes:
        response = await self.client.post(PATH, content=body)
        if response.status_code != 200 or len(response.content) < min_bytes:
            raise BenchError(f"{self.client.base_url}{PATH} answered {response.status_code} "
                             f"with {len(response.content)} bytes: {response.text[:300]}")
        return response.content

    async def run(self, body: bytes, min_bytes: int, requests: int, concurrency: int) -> Run:
        """`requests` requests from `concurrency` workers; one latency per request."""
        latencies: list[float] = []
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                await self.one(body, min_bytes)
                latencies.append(time.perf_counter() - started)

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
        wall = time.perf_counter() - started
        return Run(wall, tuple(sorted(latencies)), time.process_time() - cpu)


async def same_image(direct: Target, proxied: Target, body: bytes, min_bytes: int) -> None:
    """The base64 that comes through Switchyard is the upstream's, character for character."""
    first = orjson.loads(await direct.one(body, min_bytes))["data"][0]["b64_json"]
    second = orjson.loads(await proxied.one(body, min_bytes))["data"][0]["b64_json"]
    if first != second:
        raise BenchError("the image that came through Switchyard differs from the upstream's")
