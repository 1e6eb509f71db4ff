"""The only code that calls upstreams: send a call, classify the reply, parse the result."""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx
import orjson

from proxy.catalog import Provider, Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError, from_transport
from proxy.providers.base import Adapter, UpstreamCall, UpstreamReply


def build_clients(providers: tuple[Provider, ...], adapters: Mapping[str, Adapter],
                  time_scale: float) -> dict[str, httpx.AsyncClient]:
    """One pooled client per upstream, built once in the app's lifespan."""
    clients = {}
    for provider in providers:
        adapter = adapters[provider.protocol]
        transport = adapter.transport(provider, time_scale) if adapter.transport else None
        clients[provider.name] = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(provider.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=provider.max_in_flight,
                                max_keepalive_connections=provider.max_in_flight),
        )
    return clients


async def send(client: httpx.AsyncClient, call: UpstreamCall, timeout_s: float) -> UpstreamReply:
    """Send one call; transport errors become classified UpstreamErrors."""
    content = call.content if call.json is None else orjson.dumps(call.json)
    headers = dict(call.headers)
    if call.json is not None:
        headers.setdefault("content-type", "application/json")
    try:
        response = await client.request(call.method, call.url, content=content, headers=headers,
                                        timeout=timeout_s)
    except httpx.TransportError as exc:
        raise UpstreamError(from_transport(exc)) from None
    return UpstreamReply(response.status_code, response.headers, response.content)


async def generate(adapter: Adapter, route: Route, request: ImageRequest,
                   client: httpx.AsyncClient, deadline: float) -> ImageResult:
    """Run one synchronous request/response exchange against a route, within the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached"))
    reply = await send(client, adapter.build(request, route),
                       min(remaining, route.provider.timeout_s))
    failure = adapter.classify(reply)
    if failure is not None:
        raise UpstreamError(failure)
    try:
        result = adapter.parse(reply, request)
    except (KeyError, TypeError, ValueError, IndexError, orjson.JSONDecodeError):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply was malformed",
                                    status=reply.status)) from None
    if not result.images:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream returned no image"))
    return result
