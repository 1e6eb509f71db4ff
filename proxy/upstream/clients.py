"""One pooled client per upstream, and sending one call on it: the seam between the protocols
(proxy.providers) and the wire (lean HTTP/1.1 connections, or httpx)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import orjson

from proxy.catalog import Provider
from proxy.failures import UpstreamError, from_transport
from proxy.providers.base import Adapter, UpstreamCall, UpstreamReply
from proxy.upstream import tls, transport


def build_clients(providers: tuple[Provider, ...], adapters: Mapping[str, Adapter],
                  time_scale: float,
                  transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
                  ) -> dict[str, httpx.AsyncClient]:
    """One pooled client per upstream, built once in the app's lifespan.

    `transports` replaces the network for named providers: tests plug fake upstreams in here.
    The others get lean connections (proxy.upstream.transport) unless a proxy is configured
    in the environment; https is lean too unless the environment names its own CAs. A
    provider's `options.ca_file` (PEM) is the only CA its https certificates are verified
    against, on either path; a file that cannot be loaded is a ValueError naming it.
    """
    clients: dict[str, httpx.AsyncClient] = {}
    lean = transport.usable()
    default_tls = tls.default_context() if lean else None  # one per process: ~150 CAs parsed
    for provider in providers:
        adapter = adapters[provider.protocol]
        given = (transports or {}).get(provider.name)
        if given is None and adapter.transport:
            given = adapter.transport(provider, time_scale)
        timeout = httpx.Timeout(provider.timeout_s, connect=10.0)
        limits = httpx.Limits(max_connections=provider.max_in_flight,
                              max_keepalive_connections=provider.max_in_flight)
        own_ca = tls.provider_context(provider)
        if given is None and lean:
            clients[provider.name] = transport.Client(limits, timeout, own_ca or default_tls)
        else:
            clients[provider.name] = httpx.AsyncClient(transport=given, timeout=timeout,
                                                       limits=limits, verify=own_ca or True)
    return clients


async def send(client: httpx.AsyncClient, call: UpstreamCall, timeout_s: float) -> UpstreamReply:
    """Send one call; transport errors become classified UpstreamErrors."""
    headers = dict(call.headers)
    content = call.content
    if call.json is not None:
        content = orjson.dumps(call.json)
        headers.setdefault("content-type", "application/json")
    try:
        if isinstance(client, transport.Client) and not (call.files or call.form):
            raw = await client.lean.exchange(call.method, call.url, headers, content, timeout_s)
            if raw is not None:
                return UpstreamReply(raw.status, httpx.Headers(raw.headers), raw.body)
        if call.files or call.form:
            response = await client.request(call.method, call.url, headers=headers,
                                            data=dict(call.form or {}), files=list(call.files),
                                            timeout=timeout_s)
        else:
            response = await client.request(call.method, call.url, content=content,
                                            headers=headers, timeout=timeout_s)
    except httpx.TransportError as exc:
        raise UpstreamError(from_transport(exc)) from None
    return UpstreamReply(response.status_code, response.headers, response.content)
