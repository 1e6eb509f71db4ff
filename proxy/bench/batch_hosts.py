"""The batch benchmark's fake hosts: OpenAI-shaped image APIs as in-process httpx transports.

Each answers POST /v1/images/generations after a latency drawn around its mean (log-normal,
seeded), with a small pre-built PNG body, and keeps the figures the benchmark reports: calls
served, the most in flight at once (to show no cap was exceeded), and busy slot-seconds (to
show no capacity sat idle).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from decimal import Decimal

import httpx
import orjson

from proxy.bench.upstream import png_base64

BODY = orjson.dumps({"created": 1767225600, "data": [{"b64_json": png_base64(2000)}],
                     "output_format": "png", "size": "1024x1024"})


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One host of the benchmark's market: its cap, its typical latency and its price."""

    name: str
    cap: int
    latency_s: float  # real-world typical latency; the benchmark runs it on a faster clock
    usd_per_image: Decimal
    deferred: bool = False  # a batch API (BatchApi): cap is items in flight, latency turnaround


class Host(httpx.AsyncBaseTransport):
    """A fake host that records how hard it was used."""

    def __init__(self, spec: HostSpec, time_scale: float, seed: int, spread: float = 0.25
                 ) -> None:
        self.spec = spec
        self._mean = spec.latency_s * time_scale
        self._spread = spread
        self._random = random.Random(seed)
        self.served = 0
        self.in_flight = 0
        self.peak = 0
        self.latency_total_s = 0.0
        self._area = 0.0  # slot-seconds in use
        self._since = time.monotonic()
        self.last_answer = 0.0  # monotonic time of the last answer sent

    def _tick(self) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._since)
        self._since = now

    def busy_slot_s(self) -> float:
        self._tick()
        return self._area

    def mean_latency_s(self) -> float:
        return self.latency_total_s / self.served if self.served else self._mean

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        # A log-normal draw whose mean is the host's mean latency.
        sigma = self._spread
        delay = self._random.lognormvariate(math.log(self._mean) - sigma * sigma / 2, sigma) \
            if self._mean > 0 else 0.0
        self._tick()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(delay)
        finally:
            self._tick()
            self.in_flight -= 1
        self.served += 1
        self.latency_total_s += delay
        self.last_answer = time.monotonic()
        return httpx.Response(200, content=BODY, headers={"content-type": "application/json"})


class BatchApi(httpx.AsyncBaseTransport):
    """A fake Gemini Batch API (create, get) whose batches succeed `turnaround_s` after they
    are created, every inline request answered with the same small PNG under its key. It
    counts the batches it was sent and the requests in them."""

    def __init__(self, spec: HostSpec, time_scale: float) -> None:
        self.spec = spec
        self._turnaround = spec.latency_s * time_scale
        self._batches: dict[str, tuple[float, list[str]]] = {}
        self._answered: set[str] = set()
        self.served = 0  # requests answered
        self.creates = 0
        self.polls = 0
        self.last_answer = 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = request.url.path
        if request.method == "POST" and path.endswith(":batchGenerateContent"):
            self.creates += 1
            entries = orjson.loads(body)["batch"]["inputConfig"]["requests"]["requests"]
            name = f"batches/bench{self.creates:05d}"
            self._batches[name] = (time.monotonic(), [e["metadata"]["key"] for e in entries])
            return self._operation(name)
        self.polls += 1
        return self._operation(path.removeprefix("/v1beta/"))

    def _operation(self, name: str) -> httpx.Response:
        created, keys = self._batches[name]
        meta: dict[str, object] = {"name": name, "state": "BATCH_STATE_RUNNING"}
        if time.monotonic() - created >= self._turnaround:
            meta["state"] = "BATCH_STATE_SUCCEEDED"
            meta["output"] = {"inlinedResponses": {"inlinedResponses": [
                {"response": GEMINI_ANSWER, "metadata": {"key": key}} for key in keys]}}
            if name not in self._answered:
                self._answered.add(name)
                self.served += len(keys)
                self.last_answer = time.monotonic()
        return httpx.Response(200, content=orjson.dumps({"name": name, "metadata": meta}),
                              headers={"content-type": "application/json"})


GEMINI_ANSWER = {"candidates": [{"content": {"parts": [{"inlineData": {
    "mimeType": "image/png", "data": png_base64(2000)}}]}, "finishReason": "STOP"}],
    "usageMetadata": {"candidatesTokenCount": 1290, "candidatesTokensDetails": [
        {"modality": "IMAGE", "tokenCount": 1290}]}}
