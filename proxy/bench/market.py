"""The benchmark's upstreams: a `market` protocol adapter and the transport that plays the market.

The adapter sends one POST per attempt carrying the request's number; the transport answers
it at the loop's (virtual) time from the scenario: the backend's state when the call started
and that (request, backend) pair's dice. A reply slower than the client's read timeout ends as
httpx.ReadTimeout, as it would on the network (a hung backend's call always does, or waits
until cancelled when the client sets no read timeout). Every call is logged.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from proxy import imaging, key_pools
from proxy.bench.scenario import LIMITED_REPLY_S, Outcome, Scenario, answer
from proxy.catalog import Capabilities, Model, Provider, Route
from proxy.config import Secret
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, from_status
from proxy.providers.base import Adapter, Flow, UpstreamCall, UpstreamReply, check

MODEL = "bench-image"
MEMBER = "x-market-member"  # which provider (which key of a pool) a call came from
KEY_LIMIT_RETRY_S = 1.0  # what a key past its per-second limit is told to wait
TIER = "1K"
# The delivered picture: tiny, since only its arrival matters here.
IMAGE_SIDE = 8


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the backend saw it. `outcome` is the HTTP status, "timeout" (the client
    gave up) or "cancelled" (the router dropped it); `breaker` is the router's breaker state
    for this backend when the call arrived ("closed" for ordinary traffic)."""

    started: float
    ended: float
    backend: str
    request: int
    outcome: str
    breaker: str

    @property
    def ok(self) -> bool:
        return self.outcome == "200"


def _classify(reply: UpstreamReply) -> Failure | None:
    return None if reply.status == 200 else from_status(reply.status, reply.headers)


def flow(request: ImageRequest, route: Route) -> Flow:
    """One call; the request's number travels as its seed, so the market can find its dice."""
    reply = check((yield UpstreamCall("POST", f"{route.provider.base_url}/generate",
                                      headers={MEMBER: route.provider.name},
                                      json={"request": request.seed, "n": request.n})),
                  _classify)
    found = imaging.dimensions(reply.body)
    if found is None:
        raise ValueError("market reply is not an image")
    b64 = base64.b64encode(reply.body).decode("ascii")
    return ImageResult(images=tuple(Image("image/png", b64) for _ in range(request.n)),
                       size=f"{found[0]}x{found[1]}")


ADAPTER = Adapter("market", flow)


def routes(scenario: Scenario) -> tuple[Route, ...]:
    """One route per backend (per key of a backend with several, as the catalog makes them),
    in the scenario's order; the catalog's typical latency is the backend's usual median
    (what a catalog author would write)."""
    return tuple(Route(
        id=f"{MODEL}/{member.name}", model=MODEL, provider=member,
        upstream_model=b.name, price_per_image={TIER: b.price},
        capabilities=Capabilities(tiers=(TIER,), aspect_ratios=("1:1",)),
        typical_latency_s=b.median_s)
        for b in scenario.backends for member in key_pools.members(Provider(
            name=b.name, protocol="market", base_url=f"http://{b.name}",
            timeout_s=scenario.read_timeout_s(), max_in_flight=scenario.max_in_flight,
            pool_keys=tuple(Secret(f"{b.name}-key-{i}") for i in range(b.keys))
            if b.keys > 1 else ())))


def model(scenario: Scenario, strategy: str, hedge: bool = False) -> Model:
    return Model(name=MODEL, aliases=(), owned_by="bench", created=0, default_strategy=strategy,
                 routes=routes(scenario), hedge=hedge)


class MarketUpstream(httpx.AsyncBaseTransport):
    """Every backend of the scenario, told apart by host; logs calls and peak concurrency."""

    def __init__(self, scenario: Scenario, breaker: Callable[[str], str]) -> None:
        self._scenario = scenario
        self._breaker = breaker
        self._index = {b.name: i for i, b in enumerate(scenario.backends)}
        self._png = {b.name: imaging.encode(IMAGE_SIDE, IMAGE_SIDE, "png", b.name)
                     for b in scenario.backends}
        self._in_flight = dict.fromkeys(self._index, 0)
        self.peak_in_flight = dict.fromkeys(self._index, 0)
        self.calls: list[Call] = []
        self._starts: dict[str, deque[float]] = {}  # a key's calls started in the last second

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        member = request.headers.get(MEMBER, name)  # the key it came with, in a pool
        started = asyncio.get_running_loop().time()
        number = int(orjson.loads(await request.aread())["request"])
        index = self._index[name]
        backend = self._scenario.backends[index]
        outcome = answer(backend, backend.state(started),
                         self._scenario.dice[number][index])
        if backend.key_rps is not None and self._over_limit(member, started, backend.key_rps):
            outcome = Outcome(429, LIMITED_REPLY_S, KEY_LIMIT_RETRY_S)
        timeout = (request.extensions.get("timeout") or {}).get("read")
        log = _Log(self, started, name, number, self._breaker(member))
        self._in_flight[name] += 1
        self.peak_in_flight[name] = max(self.peak_in_flight[name], self._in_flight[name])
        try:
            return await self._reply(request, outcome, timeout, log)
        finally:
            self._in_flight[name] -= 1

    def _over_limit(self, member: str, now: float, rps: float) -> bool:
        """Whether this key already started its `rps` calls in the last second (a call
        refused counts too, as hosts count them)."""
        recent = self._starts.setdefault(member, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        recent.append(now)
        return len(recent) > rps

    async def _reply(self, request: httpx.Request, outcome: Outcome, timeout: float | None,
                     log: _Log) -> httpx.Response:
        try:
            if timeout is not None and outcome.seconds > timeout:
                await asyncio.sleep(timeout)
                log.end("timeout")
                raise httpx.ReadTimeout("market reply slower than the read timeout",
                                        request=request)
            if math.isinf(outcome.seconds):  # hung, and no read timeout: until cancelled
                await asyncio.get_running_loop().create_future()
            await asyncio.sleep(outcome.seconds)
        except asyncio.CancelledError:
            log.end("cancelled")
            raise
        log.end(str(outcome.status))
        if outcome.status != 200:
            headers = {"retry-after": f"{outcome.retry_after_s:g}"} \
                if outcome.retry_after_s else {}
            return httpx.Response(outcome.status, headers=headers, json={"error": "market"})
        return httpx.Response(200, content=self._png[log.backend],
                              headers={"content-type": "image/png"})


@dataclass(frozen=True, slots=True)
class _Log:
    """A call in progress, to be logged when it ends."""

    upstream: MarketUpstream
    started: float
    backend: str
    request: int
    breaker: str

    def end(self, outcome: str) -> None:
        self.upstream.calls.append(Call(self.started, asyncio.get_running_loop().time(),
                                        self.backend, self.request, outcome, self.breaker))
