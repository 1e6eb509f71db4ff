"""The `simulated` protocol: in-process demo upstreams with real images and no network.

Each simulated provider is an httpx transport that answers a small JSON protocol of its own,
with a latency drawn from a log-normal distribution (median and p95 from the catalog) and
failures at a configured rate, so the demo exercises the same flows, failover and metrics as a
real host does.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import secrets
from typing import Any

import httpx
import orjson
from cachetools import LRUCache

from proxy import geometry, imaging
from proxy.catalog import Provider, Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, from_status
from proxy.providers.base import Adapter, Flow, UpstreamCall, UpstreamReply, exchange

_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_Z95 = 1.6448536269514722


class SimulatedUpstream(httpx.AsyncBaseTransport):
    """A fake host: POST /v1/generate -> images, after a sampled delay, or a sampled failure."""

    def __init__(self, provider: Provider, time_scale: float) -> None:
        options = provider.options
        self._median = float(options.get("median_latency_s", 1.0))
        p95 = max(float(options.get("p95_latency_s", self._median)), self._median)
        self._sigma = math.log(p95 / self._median) / _Z95 if self._median > 0 else 0.0
        self._failure_rate = float(options.get("failure_rate", 0.0))
        self._rng = random.Random(options.get("seed", provider.name))
        self._scale = time_scale
        self._cache: LRUCache[tuple[int, int, str, str], str] = LRUCache(maxsize=64)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != "/v1/generate":
            return _json(404, {"error": {"type": "not_found", "message": "no such endpoint"}})
        body = orjson.loads(await request.aread())
        n = int(body.get("n", 1))
        delay = self._median * math.exp(self._sigma * self._rng.gauss(0.0, 1.0))
        await asyncio.sleep(delay * (1 + 0.1 * (n - 1)) * self._scale)
        if self._rng.random() < self._failure_rate:
            return self._failure()
        images = [await self._image(body, i) for i in range(n)]
        return _json(200, {"id": "sim_" + secrets.token_hex(8), "model": body["model"],
                           "width": body["width"], "height": body["height"], "images": images})

    def _failure(self) -> httpx.Response:
        roll = self._rng.random()
        if roll < 0.4:
            return _json(503, {"error": {"type": "overloaded", "message": "simulated overload"}},
                         {"retry-after": "1"})
        if roll < 0.7:
            return _json(429, {"error": {"type": "rate_limited", "message": "simulated limit"}},
                         {"retry-after": "2"})
        return _json(500, {"error": {"type": "internal", "message": "simulated crash"}})

    async def _image(self, body: dict[str, Any], index: int) -> dict[str, str]:
        fmt = body["format"]
        key = (body["width"], body["height"], fmt, f"{body['prompt']}|{body.get('seed')}|{index}")
        data = self._cache.get(key)
        if data is None:
            # Encoding is CPU work: keep it off the event loop.
            data = await asyncio.to_thread(_encode_b64, *key)
            self._cache[key] = data
        return {"mime": _MIME[fmt], "data": data}


def _encode_b64(width: int, height: int, fmt: str, seed: str) -> str:
    return base64.b64encode(imaging.encode(width, height, fmt, seed)).decode("ascii")


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **(headers or {})})


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    width, height = geometry.pixels(request.geometry.aspect_ratio, request.geometry.tier)
    # Like a real host, a simulated route only produces the formats it declares.
    native = route.capabilities.output_formats
    fmt = request.output_format if request.output_format in native else native[0]
    return UpstreamCall("POST", f"{route.provider.base_url}/v1/generate", json={
        "model": route.upstream_model, "prompt": request.prompt, "n": request.n,
        "width": width, "height": height, "format": fmt,
        "seed": request.seed, "references": len(request.images),
    })


def parse(reply: UpstreamReply, request: ImageRequest) -> ImageResult:
    body = reply.json()
    images = tuple(Image(mime=i["mime"], b64=i["data"]) for i in body["images"])
    return ImageResult(images=images, size=geometry.size_text(body["width"], body["height"]),
                       upstream_id=body["id"])


def classify(reply: UpstreamReply) -> Failure | None:
    return None if reply.status == 200 else from_status(reply.status, reply.headers)


def flow(request: ImageRequest, route: Route) -> Flow:
    return exchange(build(request, route), classify, parse, request)


def _transport(provider: Provider, time_scale: float) -> httpx.AsyncBaseTransport:
    return SimulatedUpstream(provider, time_scale)


ADAPTER = Adapter("simulated", flow, transport=_transport)

__all__ = ["ADAPTER", "SimulatedUpstream"]
