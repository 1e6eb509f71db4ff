"""One pooled client per upstream, and sending one call on it: the seam between the protocols
(proxy.providers) and the wire (lean HTTP/1.1 connections, or httpx).

Every call is bounded in time and size: its timeout is a deadline for the whole reply (a host
that drips a byte every few seconds is never "active" enough to keep it), and no reply is held
past the client's `max_reply_bytes`, compressed or decoded. Either ends the call as a failure
the router fails over from."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import httpx
import orjson

from proxy.catalog import Provider
from proxy.domain import PartialImage
from proxy.failures import Failure, Kind, UpstreamError, from_transport
from proxy.providers.base import Adapter, UpstreamCall, UpstreamReply
from proxy.upstream import events, tls, transport
from proxy.upstream.http1 import ReplyTooLarge

# What one upstream reply may hold, compressed or decoded: a few times the biggest 4K image
# (a 4K PNG is up to ~30 MB, ~40 MB as base64), so n images of one call still fit.
DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024


def build_clients(providers: tuple[Provider, ...], adapters: Mapping[str, Adapter],
                  time_scale: float,
                  transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
                  max_reply_bytes: int | None = DEFAULT_MAX_REPLY_BYTES,
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
            clients[provider.name] = transport.Client(limits, timeout, own_ca or default_tls,
                                                      max_reply_bytes)
        else:
            clients[provider.name] = transport.Capped(
                max_reply_bytes, transport=given, timeout=timeout, limits=limits,
                verify=own_ca or True)
    return clients


Relay = Callable[[PartialImage], object]  # where a streamed call's partial images go


async def send(client: httpx.AsyncClient, call: UpstreamCall, timeout_s: float,
               relay: Relay | None = None) -> UpstreamReply:
    """Send one call, its whole reply due within `timeout_s`; transport errors, a late reply
    and an oversized one become classified UpstreamErrors. A streamed call's partial images
    go to `relay` as they arrive."""
    try:
        # A little later than the silence timeouts inside, which name what went quiet.
        async with asyncio.timeout(timeout_s * 1.05 + 0.05) as limit:
            if call.partials is not None:
                return await _streamed(client, call, timeout_s, relay)
            return await _exchange(client, call, timeout_s)
    except TimeoutError:
        if not limit.expired():
            raise
        raise UpstreamError(Failure(Kind.TIMEOUT, f"upstream ReadTimeout: no complete reply by "
                                                  f"the call's deadline ({timeout_s:.3g} s)")
                            ) from None
    except httpx.TransportError as exc:
        raise UpstreamError(from_transport(exc)) from None
    except httpx.DecodingError:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply does not decode")
                            ) from None


async def _exchange(client: httpx.AsyncClient, call: UpstreamCall,
                    timeout_s: float) -> UpstreamReply:
    headers = dict(call.headers)
    content = call.content
    if call.json is not None:
        content = orjson.dumps(call.json)
        headers.setdefault("content-type", "application/json")
    if isinstance(client, transport.Client) and not (call.files or call.form):
        raw = await client.lean.exchange(call.method, call.url, headers, content, timeout_s)
        if raw is not None:
            return UpstreamReply(raw.status, httpx.Headers(raw.headers), raw.body)
    # Only codings transport.inflate undoes with a cap (httpx would offer br or zstd too).
    headers.setdefault("accept-encoding", transport.HTTPS_ENCODINGS)
    request = _request(client, call, headers, content, timeout_s)
    cap = _cap(client)
    response = await client.send(request, stream=True)
    try:
        body = await _read(response, cap)
    finally:
        await response.aclose()
    return UpstreamReply(response.status_code, response.headers, body)


def _request(client: httpx.AsyncClient, call: UpstreamCall, headers: dict[str, str],
             content: bytes | None, timeout_s: float) -> httpx.Request:
    if call.files or call.form:
        return client.build_request(call.method, call.url, headers=headers,
                                    data=dict(call.form or {}), files=list(call.files),
                                    timeout=timeout_s)
    return client.build_request(call.method, call.url, content=content, headers=headers,
                                timeout=timeout_s)


def _cap(client: httpx.AsyncClient) -> int | None:
    return client.max_reply_bytes if isinstance(client, transport.Capped) else None


async def _streamed(client: httpx.AsyncClient, call: UpstreamCall, timeout_s: float,
                    relay: Relay | None) -> UpstreamReply:
    """A call whose reply may be an event stream, read as it arrives: partial images go to
    `relay` (never kept), the other events make the reply's body (within the cap). Bytes
    already through are not thrown away when the stream breaks: a host that completed an
    image and then dropped the connection still delivered it."""
    assert call.partials is not None
    # Uncompressed: a compressor upstream may hold an event back until its buffer fills.
    headers = {**call.headers, "accept": "text/event-stream", "accept-encoding": "identity"}
    content = orjson.dumps(call.json) if call.json is not None else call.content
    if call.json is not None:
        headers.setdefault("content-type", "application/json")
    cap = _cap(client)
    stream = _Events(call.partials, cap, relay)
    if isinstance(client, transport.Client):
        # The event stream is decoded as its bytes arrive on the lean connection: no httpx
        # objects, no chunk iterator, between the host's first event and the client's.
        if call.files or call.form:  # an edit's upload: httpx writes the multipart body
            built = _request(client, call, headers, content, timeout_s)
            content = built.read()
            headers = {name: value for name, value in built.headers.items()
                       if name not in ("content-length", "transfer-encoding")}
        try:
            raw = await client.lean.exchange(call.method, call.url, headers, content,
                                             timeout_s, stream.sink_for)
        except httpx.TransportError as exc:
            if stream.head is None or not stream.kept or isinstance(exc, ReplyTooLarge):
                raise
            return stream.reply(stream.head)
        if raw is not None:
            if stream.head is None:  # an error, or not sunk (compressed): read whole
                return stream.whole(raw.status, httpx.Headers(raw.headers), raw.body)
            return stream.reply(stream.head)
    request = _request(client, call, headers, content, timeout_s)
    # On a lean client, straight to its httpx transport: the client's own send (auth,
    # redirects, cookies, hooks) has nothing to do here and costs the first event time.
    response = await (client.lean.fallback.handle_async_request(request)
                      if isinstance(client, transport.Client) else
                      client.send(request, stream=True))
    try:
        if response.status_code >= 300 or \
                not events.is_event_stream(response.headers.get("content-type", "")):
            return UpstreamReply(response.status_code, response.headers,
                                 await _read(response, cap))
        stream.head = (response.status_code, response.headers)
        try:
            async for chunk in response.aiter_bytes():
                stream.feed(chunk)
        except httpx.TransportError as exc:
            if not stream.kept or isinstance(exc, ReplyTooLarge):
                raise
        return stream.reply(stream.head)
    finally:
        await response.aclose()


class _Events:
    """A streamed reply's events as they arrive: partial images go to `relay`, never kept; the
    others are kept, within `cap`, to make the reply's body."""

    def __init__(self, partials: Callable[[events.ServerEvent], PartialImage | None],
                 cap: int | None, relay: Relay | None) -> None:
        self.partials, self.cap, self.relay = partials, cap, relay
        self.kept = bytearray()
        self.head: tuple[int, httpx.Headers] | None = None  # once the event stream began
        self._decoder = events.Decoder(cap)

    def sink_for(self, status: int, raw: list[tuple[bytes, bytes]]) -> Callable[[bytes], None] \
            | None:
        """Where the lean connection puts the body: here, when it is an event stream."""
        headers = httpx.Headers(raw)
        if status >= 300 or not events.is_event_stream(headers.get("content-type", "")):
            return None
        self.head = (status, headers)
        return self.feed

    def feed(self, chunk: bytes) -> None:
        for event in self._decoder.feed(chunk):
            image = self.partials(event)
            if image is None:
                self.kept += event.encoded()
                if self.cap is not None and len(self.kept) > self.cap:
                    raise ReplyTooLarge(f"reply larger than {self.cap} bytes")
            elif self.relay is not None:
                self.relay(image)

    def whole(self, status: int, headers: httpx.Headers,
              body: bytes | bytearray) -> UpstreamReply:
        """A reply read whole: an event stream's events are handled as if they had streamed."""
        if status >= 300 or not events.is_event_stream(headers.get("content-type", "")):
            return UpstreamReply(status, headers, body)
        self.feed(bytes(body) + b"\n\n")
        return self.reply((status, headers))

    def reply(self, head: tuple[int, httpx.Headers]) -> UpstreamReply:
        return UpstreamReply(head[0], head[1], bytes(self.kept))


async def _read(response: httpx.Response, cap: int | None) -> bytes | bytearray:
    """The body as sent, refused (ReplyTooLarge) as soon as it passes `cap` bytes, then
    decoded with the same cap (httpx would inflate a gzip bomb whole first)."""
    declared = response.headers.get("content-length", "")
    if cap is not None and declared.isdigit() and int(declared) > cap:
        raise ReplyTooLarge(f"reply larger than {cap} bytes")
    try:
        read = response.content  # an in-process transport's reply comes read (and decoded)
    except httpx.ResponseNotRead:
        pass
    else:
        if cap is not None and len(read) > cap:
            raise ReplyTooLarge(f"reply larger than {cap} bytes")
        return read
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_raw():
        total += len(chunk)
        if cap is not None and total > cap:
            chunks.clear()  # not kept alive by the traceback of the failure below
            raise ReplyTooLarge(f"reply larger than {cap} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    chunks.clear()
    return transport.undone(body, response.headers.get("content-encoding", ""), cap)
