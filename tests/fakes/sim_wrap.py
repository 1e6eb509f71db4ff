"""A simulated host of the test catalog, wrapped: it counts the calls it gets (so a test sees
how many upstream calls a burst of requests really made), and may deliver fewer images than
asked (a host that comes back short: 0 < delivered < n)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import orjson

from proxy.app import load_catalog
from proxy.config import Config
from proxy.providers.simulated import SimulatedUpstream


@dataclass
class Wrapped(httpx.AsyncBaseTransport):
    """`inner` answers; at most `keep` images of each answer are handed on (None: all), and
    each answer waits `delay_s` first (so that concurrent requests overlap)."""

    inner: httpx.AsyncBaseTransport
    keep: int | None = None
    delay_s: float = 0.0
    calls: int = 0
    asked: list[int] = field(default_factory=list)  # the n of each call

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = orjson.loads(await request.aread())
        self.asked.append(int(body.get("n", 1)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        forwarded = httpx.Request(request.method, request.url, headers=request.headers,
                                  content=orjson.dumps(body))
        reply = await self.inner.handle_async_request(forwarded)
        data = orjson.loads(await reply.aread())
        if reply.status_code == 200 and self.keep is not None:
            data["images"] = data["images"][:self.keep]
        return httpx.Response(reply.status_code, content=orjson.dumps(data),
                              headers={"content-type": "application/json"})


def wrapped(config: Config, names: tuple[str, ...], keep: int | None = None,
            delay_s: float = 0.0) -> Mapping[str, Wrapped]:
    """Provider name -> its simulated host wrapped, for build_app's `transports`."""
    providers = {p.name: p for p in load_catalog(config).providers}
    return {name: Wrapped(SimulatedUpstream(providers[name], 0.0), keep, delay_s)
            for name in names}
