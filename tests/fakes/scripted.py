"""A scripted upstream for router tests: each provider answers from a script of outcomes.

The adapter (protocol "scripted") sends one POST per attempt; the transport answers it after
the scripted delay with a real PNG, or with the scripted HTTP error. Tests see how many calls
each provider got, and how many were cancelled mid-flight.
"""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import httpx

from proxy import imaging
from proxy.catalog import Capabilities, Model, Provider, Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, from_status
from proxy.providers.base import Adapter, Flow, UpstreamCall, UpstreamReply, check


@dataclass(frozen=True)
class Step:
    """One scripted answer: after `delay_s`, HTTP `status` (200 delivers an image)."""

    status: int = 200
    delay_s: float = 0.0
    retry_after: str | None = None


OK = Step()


def _classify(reply: UpstreamReply) -> Failure | None:
    return None if reply.status == 200 else from_status(reply.status, reply.headers)


def flow(request: ImageRequest, route: Route) -> Flow:
    reply = check((yield UpstreamCall("POST", f"{route.provider.base_url}/generate")),
                  _classify)
    b64 = base64.b64encode(reply.body).decode()
    return ImageResult(images=tuple(Image("image/png", b64) for _ in range(request.n)))


ADAPTER = Adapter("scripted", flow)


@dataclass
class Scripted(httpx.AsyncBaseTransport):
    """Answers every provider from its own script; an empty script answers OK."""

    scripts: dict[str, deque[Step]] = field(default_factory=lambda: defaultdict(deque))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cancelled: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    default: Step = OK

    def script(self, provider: str, *steps: Step) -> None:
        self.scripts[provider].extend(steps)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        provider = request.url.host
        self.calls[provider] += 1
        queue = self.scripts[provider]
        step = queue.popleft() if queue else self.default
        try:
            await asyncio.sleep(step.delay_s)
        except asyncio.CancelledError:
            self.cancelled[provider] += 1
            raise
        if step.status != 200:
            headers = {"retry-after": step.retry_after} if step.retry_after else {}
            return httpx.Response(step.status, headers=headers, json={"error": "scripted"})
        return httpx.Response(200, content=imaging.encode(64, 64, "png", provider))


def route(name: str, price: str, latency: float = 1.0, max_in_flight: int = 16) -> Route:
    provider = Provider(name=name, protocol="scripted", base_url=f"http://{name}",
                        max_in_flight=max_in_flight, timeout_s=30)
    return Route(id=f"m/{name}", model="m", provider=provider, upstream_model=f"{name}-1",
                 price_per_image={"1K": Decimal(price)},
                 capabilities=Capabilities(tiers=("1K",), aspect_ratios=("1:1",), max_n=4),
                 typical_latency_s=latency)


def model(routes: Iterable[Route], strategy: str = "cheapest", hedge: bool = False) -> Model:
    return Model(name="m", aliases=(), owned_by="tests", created=0, default_strategy=strategy,
                 routes=tuple(routes), hedge=hedge)
