"""The response cache on the request path: which requests it may answer, the key an answer is
kept under, answers packed for the store (proxy/billing/cache_store.py), and identical
requests in flight in this process sharing one upstream call.

A request is cacheable when it, its key or its model gives a ttl (the first that says wins; 0
turns the cache off), or else when it carries a seed, `cache_seed_ttl_s` is on and the host
its plan tries first honours seeds (`capabilities.seeds` in routes/). Its key is a digest of
what shapes the images (model, kind, prompt, n, geometry, format, quality, background,
compression, style, moderation, fidelity, seed, the providers it allows, the reference
images' digests) within a scope: the tenant, or everyone when the operator shares the cache.
How the answer is delivered (b64 or a link) and how routes are ranked are not in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

import orjson

from proxy import metrics
from proxy.api.errors import bad_request
from proxy.billing.cache_store import CacheStore, Found
from proxy.catalog import MAX_CACHE_TTL_S, Model, Route
from proxy.config import Config
from proxy.domain import Image, ImageRequest, ImageResult, InputImage, Served, Usage

log = logging.getLogger("switchyard.cache")

KEY_VERSION = 1  # bump when what goes into a key changes: old entries then simply miss
SHARED_SCOPE = "*"
OUTCOMES = {"hit": "cache_hit", "coalesced": "coalesced"}  # how -> the ledger's outcome
_EXAMPLE = '{"ttl_s": 3600}'


def cache_ttl(data: Mapping[str, Any]) -> int | None:
    """The body's `cache` object (JSON text in a multipart form) -> its ttl_s, checked."""
    value = data.get("cache")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise bad_request("cache", f"'cache' must be a JSON object such as {_EXAMPLE}") \
                from None
    if not isinstance(value, dict):
        raise bad_request("cache", f"'cache' must be an object such as {_EXAMPLE}")
    for name in value:
        if name != "ttl_s":
            raise bad_request(f"cache.{name}", f"unrecognized cache option: {name} (known: "
                                               "ttl_s)", code="unknown_parameter")
    ttl = value.get("ttl_s")
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_CACHE_TTL_S:
        raise bad_request("cache.ttl_s", f"'cache.ttl_s' must be an integer from 0 to "
                                         f"{MAX_CACHE_TTL_S} (seconds; 0: do not cache)")
    return ttl


@dataclass(frozen=True, slots=True)
class Cacheable:
    """A request the cache may answer: its key, scope and ttl."""

    key: str
    scope: str
    ttl_s: int
    asked_for: bool  # the request, its key or its model asked (else its seed made it so)

    def keeps(self, route: Route | None) -> bool:
        """Whether an answer this route made is kept: asked for, or from a host that gives
        the same image for the same seed."""
        return self.asked_for or (route is not None and route.capabilities.seeds)


def cacheable(config: Config, ttls: tuple[int | None, ...], asked: ImageRequest, first: Route,
              tenant: str) -> Cacheable | None:
    """`ttls`: the request's, the key's and the model's, in that order."""
    scope = SHARED_SCOPE if config.cache_shared else tenant
    for ttl in ttls:
        if ttl is not None:
            return Cacheable(request_key(asked, scope), scope, ttl, True) if ttl else None
    if asked.seed is not None and config.cache_seed_ttl_s and first.capabilities.seeds:
        return Cacheable(request_key(asked, scope), scope, config.cache_seed_ttl_s, False)
    return None


def request_key(asked: ImageRequest, scope: str) -> str:
    shape = asked.geometry
    parts = [KEY_VERSION, scope, asked.kind, asked.model, asked.prompt, asked.n,
             shape.aspect_ratio, shape.tier, shape.exact_size, asked.output_format,
             asked.quality, asked.background, asked.output_compression, asked.moderation,
             asked.style, asked.input_fidelity, asked.seed, sorted(asked.policy.only),
             sorted(asked.policy.ignore), [_digest(image) for image in asked.images],
             _digest(asked.mask) if asked.mask is not None else None]
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


def _digest(image: InputImage) -> str:
    """An upload by its bytes; a URL (https or data:) by its text."""
    content = image.data if image.data is not None else (image.url or "").encode()
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True, slots=True)
class Reuse:
    """An answer served again, from the cache or from the identical request in flight."""

    served: Served  # as this request gets it: no attempts, no upstream cost
    made_for: Decimal  # what the upstream charged for these images when it made them
    how: str  # "hit" | "coalesced"


def reused(served: Served, how: str) -> Reuse:
    again = replace(served, cost_usd=Decimal(0), attempts=(), quote_usd=Decimal(0),
                    upstream_s=0.0)
    result = served.result  # a host that made more than were asked charged for the rest too
    return Reuse(again, served.cost_usd * len(result.images) / result.images_made, how)


def pack(served: Served) -> bytes:
    result = served.result
    usage = result.usage
    return orjson.dumps({
        "images": [[i.mime, i.b64, i.revised_prompt] for i in result.images],
        "size": result.size, "upstream_id": result.upstream_id, "text": result.text,
        "usage": None if usage is None else [usage.input_tokens, usage.output_tokens,
                                             usage.input_image_tokens,
                                             usage.output_image_tokens],
        "made": result.made, "converted_from": served.converted_from, "route": served.route_id,
        "provider": served.provider, "upstream_model": served.upstream_model,
        "cost_usd": str(served.cost_usd)})


def unpack(body: bytes, strategy: str) -> Reuse:
    data = orjson.loads(body)
    usage = data["usage"]
    result = ImageResult(
        images=tuple(Image(mime, b64, revised) for mime, b64, revised in data["images"]),
        size=data["size"], upstream_id=data["upstream_id"], text=data["text"],
        usage=Usage(*usage) if usage is not None else None,
        converted_from=data["converted_from"], made=data.get("made"))
    served = Served(result, data["route"], data["provider"], data["upstream_model"],
                    Decimal(data["cost_usd"]), (), data["converted_from"], strategy=strategy)
    return reused(served, "hit")


class Abandoned(Exception):
    """The request leading a flight ended without an answer (its client left, or it was
    refused before it ran): those waiting on it go on by themselves."""


class Flights:
    """Identical requests in flight in this process: the first one's run, which the others
    wait on. Across replicas nothing is shared until the answer is in the store."""

    def __init__(self) -> None:
        self._flying: dict[str, asyncio.Future[Served]] = {}

    def joined(self, key: str) -> asyncio.Future[Served] | None:
        return self._flying.get(key)

    def lead(self, key: str) -> asyncio.Future[Served]:
        flight: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._flying[key] = flight
        return flight

    def end(self, key: str, flight: asyncio.Future[Served],
            error: BaseException | None = None) -> None:
        """Settle `flight` (with `error`, or Abandoned if nothing landed) and forget it."""
        if not flight.done():
            flight.set_exception(error or Abandoned())
            flight.exception()  # retrieved: nobody waiting is no error
        if self._flying.get(key) is flight:
            del self._flying[key]


@dataclass(slots=True)
class Role:
    """What the cache makes of one request: it leads the upstream call ("miss"), is answered
    from the store ("hit"), or waits on the identical request in flight ("coalesced")."""

    how: str
    cache: Cacheable
    flights: Flights
    found: Reuse | None = None
    flight: asyncio.Future[Served] | None = field(default=None, repr=False)

    @property
    def reuses(self) -> bool:
        return self.how != "miss"

    def landed(self, served: Served) -> None:
        """The leader's run delivered: whoever waits gets it now."""
        if self.how == "miss" and self.flight is not None and not self.flight.done():
            self.flight.set_result(served)

    def failed(self, error: BaseException) -> None:
        if self.how == "miss" and self.flight is not None:
            self.flights.end(self.cache.key, self.flight, error)

    def close(self) -> None:
        """The leader's request is over (its answer stored, or none): forget the flight."""
        if self.how == "miss" and self.flight is not None:
            self.flights.end(self.cache.key, self.flight)

    async def wait(self) -> Reuse | None:
        """The leader's answer, shared; None if the leader gave up without one. Raises the
        leader's RoutesFailed. Leaving (the client went away) leaves the leader running."""
        assert self.flight is not None
        try:
            return reused(await asyncio.shield(self.flight), "coalesced")
        except Abandoned:
            return None


class Lookup(Protocol):
    """What consult needs of the store (CacheStore; tests give a stand-in)."""

    def get(self, key: str, not_before: int) -> Found | None: ...


async def consult(flights: Flights, store: Lookup, cache: Cacheable, strategy: str) -> Role:
    """The request's role: waits on a flight if an identical request is in one, else is
    answered by the store if it holds a fresh answer, else leads a new flight."""
    flight = flights.joined(cache.key)
    if flight is not None:
        return Role("coalesced", cache, flights, flight=flight)
    try:
        found = await asyncio.to_thread(store.get, cache.key, int(time.time()) - cache.ttl_s)
    except Exception as exc:  # a cache that cannot answer is a miss, never an error
        log.warning("response cache lookup failed (%s): answered as a miss",
                    type(exc).__name__)
        found = None
    if found is not None:
        return Role("hit", cache, flights, found=unpack(found.body, strategy))
    flight = flights.joined(cache.key)  # one may have taken off while the store looked
    if flight is not None:
        return Role("coalesced", cache, flights, flight=flight)
    return Role("miss", cache, flights, flight=flights.lead(cache.key))


async def keep(store: CacheStore, max_bytes: int, role: Role, model: Model, served: Served) -> None:
    """Store a miss's answer for the role's ttl; a failure is logged, never the client's."""
    body = pack(served)
    try:
        stored = await asyncio.to_thread(store.put, role.cache.key, role.cache.scope,
                                         model.name, body, role.cache.ttl_s, max_bytes)
    except Exception as exc:
        log.warning("response cache store failed (%s): the answer is not kept",
                    type(exc).__name__)
        return
    if stored.evicted:
        metrics.CACHE_EVICTIONS.inc(stored.evicted)
    metrics.CACHE_BYTES.set(stored.total_bytes)


def observe(model: Model, asked: ImageRequest, role: Role, reuse: Reuse | None) -> None:
    """The cache's metrics for one answered request."""
    metrics.CACHE_REQUESTS.labels(model.name, role.how if reuse else "miss").inc()
    if reuse is None:
        return
    images = len(reuse.served.result.images)
    metrics.REQUESTS.labels(model.name, "cache", "success").inc()
    metrics.IMAGES.labels(model.name, "cache", asked.geometry.tier).inc(images)
    metrics.CACHE_SAVED.labels(model.name).inc(float(reuse.made_for))


def route_of(model: Model, route_id: str) -> Route | None:
    return next((route for route in model.routes if route.id == route_id), None)
