"""The upstream clients' transport: keep-alive calls on lean HTTP/1.1 connections
(proxy.upstream.http1), over TLS for https, and everything else on httpx's own transport.

httpx's request and response objects and httpcore took about a quarter of a proxied
request's CPU, and read a reply in chunks joined later (two copies of every image). A call to
an upstream needs none of that. https is lean only with a TLS context (proxy.upstream.tls:
httpx's own default, or a provider's CA), so certificates are verified exactly as httpx would;
proxies, CAs named in the environment, odd URLs or headers go the ordinary httpx way, so
nothing changes for them.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from proxy.upstream.http1 import Connection, Reply, ReplyTooLarge, Sink, SinkFor

# As httpx: an idle connection older than this is closed instead of reused.
KEEPALIVE_EXPIRY_S = 5.0
USER_AGENT = f"python-httpx/{httpx.__version__}"
# Plain http is a local network: compressing it costs both ends more CPU than it saves. https
# crosses the internet: it offers gzip and deflate (HTTPS_ENCODINGS), which are undone capped.
_DEFAULTS = (("accept", "*/*"), ("accept-encoding", "identity"), ("connection", "keep-alive"),
             ("user-agent", USER_AGENT))
_INFLATE_PIECE = 1024 * 1024  # decoded bytes per step of inflate()
# Over https, the codings Switchyard can undo with a cap on their output (transport.inflate).
HTTPS_ENCODINGS = "gzip, deflate"
_PORTS = {"http": 80, "https": 443}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ONE_WRITE = 64 * 1024  # a request body up to this goes out in one write with its head
# What httpx would send unchanged in a request target; anything else is left to httpx.
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A host name of dot-separated labels, or an IP literal: anything else (say an empty label,
# which a TLS server name cannot hold) is left to httpx.
_LABEL = r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*|[0-9a-f.]*:[0-9a-f:.]*")
_MAX_TARGETS = 1024


@dataclass(frozen=True, slots=True)
class Target:
    """Where an http or https URL goes: the origin to connect to, the Host header (as httpx
    writes it: lower case, no default port), the path."""

    secure: bool  # https
    host: str
    port: int
    authority: str
    path: str

    @property
    def origin(self) -> tuple[bool, str, int]:
        return self.secure, self.host, self.port


def parse_target(url: str) -> Target | None:
    """The target of an http or https URL httpx would send as written; None for anything
    else."""
    scheme, _, _ = url.partition("://")
    default = _PORTS.get(scheme)
    if default is None or not url.isascii():
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname or ""
    if not _HOST.fullmatch(host) or "@" in parts.netloc or not _PATH.fullmatch(path) \
            or any(c in parts.netloc for c in " \t\r\n"):
        return None
    authority = f"[{host}]" if ":" in host else host
    if port not in (None, default):
        authority += f":{port}"
    return Target(scheme == "https", host, port or default, authority, path)


def encode_head(method: str, target: Target, headers: Iterable[tuple[str, str]],
                length: int | None, defaults: Iterable[tuple[str, str]] = _DEFAULTS
                ) -> bytes | None:
    """Request line and headers (`defaults` for those not given); None if a name or value is
    one httpx should judge (non-ASCII, not a token, a line break)."""
    if not _TOKEN.fullmatch(method):
        return None
    lines = [f"{method} {target.path} HTTP/1.1\r\n"]
    given = set()
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
            return None
        given.add(name.lower())
        lines.append(f"{name}: {value}\r\n")
    if "host" not in given:
        lines.insert(1, f"host: {target.authority}\r\n")
    lines.extend(f"{name}: {value}\r\n" for name, value in defaults if name not in given)
    if length is not None and "content-length" not in given:
        lines.append(f"content-length: {length}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("ascii")
    except UnicodeEncodeError:
        return None


_UNKNOWN: Target | None = Target(False, "", 0, "", "")  # not parsed yet


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float | None
    read: float | None
    pool: float | None

    @classmethod
    def of(cls, extension: Mapping[str, float | None]) -> Timeouts:
        return cls(extension.get("connect"), extension.get("read"), extension.get("pool"))


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections for http, and for https when given a TLS context, at
    most `max_connections` busy at once; every other request goes to an
    httpx.AsyncHTTPTransport with the same limits (verifying with the same context, if any)."""

    def __init__(self, limits: httpx.Limits, tls: ssl.SSLContext | None = None,
                 max_reply_bytes: int | None = None) -> None:
        # Sharing the context is safe while httpx has no http2 here: it sets the same ALPN.
        self.fallback = httpx.AsyncHTTPTransport(limits=limits, verify=tls or True)
        self.tls = tls
        self.max_reply_bytes = max_reply_bytes
        self.https_defaults: tuple[tuple[str, str], ...] = _DEFAULTS
        self._slots = asyncio.Semaphore(limits.max_connections or 1_000_000)
        self._keep = limits.max_keepalive_connections or 1_000_000
        self._idle: dict[tuple[bool, str, int], list[Connection]] = {}
        self._targets: dict[str, Target | None] = {}

    def target(self, url: str) -> Target | None:
        """Where a URL goes on lean connections; None when httpx must send it."""
        target = parse_target(url)
        if target is not None and target.secure and self.tls is None:
            return None
        return target

    async def exchange(self, method: str, url: str, headers: Mapping[str, str],
                       content: bytes | None, timeout_s: float,
                       sink_for: SinkFor | None = None) -> Reply | None:
        """The reply to a call, sent without building httpx objects; None when the call is not
        lean as written (the caller sends it through httpx instead). `sink_for` may take the
        body as it arrives (http1.Connection.request); a compressed body is never sunk."""
        target = self._targets.get(url, _UNKNOWN)
        if target is _UNKNOWN:
            if len(self._targets) >= _MAX_TARGETS:  # poll URLs carry job ids: keep it bounded
                self._targets.clear()
            target = self._targets[url] = self.target(url)
        if target is None:
            return None
        content = content or b""
        length = len(content) if content or method in _BODY_METHODS else None
        head = encode_head(method, target, headers.items(), length,
                           self.https_defaults if target.secure else _DEFAULTS)
        if head is None:
            return None
        if sink_for is not None:
            sink_for = _plain(sink_for)
        reply = await self._send(target, _pieces(head, content), method == "HEAD",
                                 Timeouts(timeout_s, timeout_s, timeout_s), sink_for)
        if any(name.lower() == b"content-encoding" for name, _ in reply.headers):
            return decoded(reply, self.max_reply_bytes)
        return reply

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's entry (multipart uploads come this way): lean connections where they may
        go, anything else on httpx's own transport, and so is a call that asks for an event
        stream (lean connections read a reply whole)."""
        if request.headers.get("accept") == "text/event-stream":
            return await self.fallback.handle_async_request(request)
        target = self.target(str(request.url))
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in request.headers.raw
                   if name.lower() not in (b"transfer-encoding", b"content-length")]
        head = None
        if target is not None:
            body = await request.aread()
            length = len(body) if body or request.method in _BODY_METHODS else None
            head = encode_head(request.method, target, headers, length)
        if target is None or head is None:
            return await self.fallback.handle_async_request(request)
        reply = await self._send(target, _pieces(head, body), request.method == "HEAD",
                                 Timeouts.of(request.extensions.get("timeout", {})))
        return httpx.Response(reply.status, headers=reply.headers,
                              stream=httpx.ByteStream(bytes(reply.body)),
                              extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await self.fallback.aclose()

    async def _send(self, target: Target, data: list[bytes], head_only: bool,
                    timeouts: Timeouts, sink_for: SinkFor | None = None) -> Reply:
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.pool):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time") from None
        else:
            await self._slots.acquire()
        try:
            connection = self._reuse(target.origin) or await _connect(
                target, self.tls if target.secure else None, timeouts.connect,
                self.max_reply_bytes)
            reply = await connection.request(data, head_only, timeouts.read, sink_for)
        finally:
            self._slots.release()
        if not reply.reusable or connection.closed:
            connection.close()
            return reply
        connection.idle_since = time.monotonic()
        idle = self._idle.setdefault(target.origin, [])
        idle.append(connection)
        if len(idle) > self._keep:
            idle.pop(0).close()
        return reply

    def _reuse(self, origin: tuple[bool, str, int]) -> Connection | None:
        """The most recently used live idle connection to the origin; stale ones are closed."""
        idle = self._idle.get(origin)
        oldest = time.monotonic() - KEEPALIVE_EXPIRY_S
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since >= oldest:
                return connection
            connection.close()
        return None


class Capped(httpx.AsyncClient):
    """An upstream's pooled client, with the most one reply of it may hold (clients.send)."""

    def __init__(self, max_reply_bytes: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.max_reply_bytes = max_reply_bytes


class Client(Capped):
    """An upstream's pooled client on a LeanTransport; clients.send hands its calls to
    `lean.exchange`, skipping httpx's request and response objects. `tls` verifies https
    upstreams on lean connections; without it https goes through httpx."""

    def __init__(self, limits: httpx.Limits, timeout: httpx.Timeout,
                 tls: ssl.SSLContext | None = None, max_reply_bytes: int | None = None) -> None:
        self.lean = LeanTransport(limits, tls, max_reply_bytes)
        super().__init__(max_reply_bytes, transport=self.lean, limits=limits, timeout=timeout)
        self.lean.https_defaults = tuple(
            (name, HTTPS_ENCODINGS if name == "accept-encoding" else value)
            for name, value in _DEFAULTS)


def usable() -> bool:
    """Whether lean connections may be used: not when the environment names a proxy (httpx
    honours those only for clients without their own transport)."""
    proxies = urllib.request.getproxies()
    return not any(proxies.get(scheme) for scheme in ("http", "https", "all"))


async def _connect(target: Target, tls: ssl.SSLContext | None, timeout_s: float | None,
                   max_body: int | None) -> Connection:
    """A new connection; with `tls`, after a handshake that verified the server's certificate
    for the target's host. Like httpcore, a failed TCP connect or TLS handshake is a
    ConnectError, and the one timeout covers both."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            if tls is None:
                _, connection = await loop.create_connection(lambda: Connection(max_body),
                                                             target.host, target.port)
            else:
                _, connection = await loop.create_connection(
                    lambda: Connection(max_body), target.host, target.port, ssl=tls,
                    server_hostname=target.host, ssl_handshake_timeout=timeout_s)
    except TimeoutError:
        raise httpx.ConnectTimeout(f"connecting to {target.authority} timed out") from None
    except OSError as exc:  # refused, unreachable, and every ssl.SSLError (a bad certificate)
        raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
    return connection


def _plain(sink_for: SinkFor) -> SinkFor:
    """`sink_for`, given decoded bytes: a gzip or deflate body (a host that compresses an
    event stream though asked not to) is inflated as it arrives; any other coding is read
    whole and decoded."""
    def plain(status: int, headers: list[tuple[bytes, bytes]]) -> Sink | None:
        codings = [c.strip().lower() for name, value in headers
                   if name.lower() == b"content-encoding" for c in value.split(b",")]
        codings = [c for c in codings if c and c != b"identity"]
        if len(codings) > 1 or (codings and codings[0] not in (b"gzip", b"deflate")):
            return None
        sink = sink_for(status, headers)
        return _inflating(sink, codings[0]) if sink is not None and codings else sink
    return plain


def _inflating(sink: Sink, coding: bytes) -> Sink:
    """A sink that inflates its bytes for `sink`, a piece at a time (a small bomb never
    becomes one big buffer: the sink bounds what it keeps, as it does for a plain stream)."""
    stream: list[Any] = []  # the decompressor, made on the first bytes (deflate: which kind)

    def feed(piece: bytes) -> None:
        if not stream:
            wbits = zlib.MAX_WBITS | 16 if coding == b"gzip" else \
                zlib.MAX_WBITS if piece[:1] == b"\x78" else -zlib.MAX_WBITS
            stream.append(zlib.decompressobj(wbits))
        try:
            while piece:
                sink(stream[0].decompress(piece, _INFLATE_PIECE))
                piece = stream[0].unconsumed_tail
        except zlib.error as exc:
            raise httpx.DecodingError(f"{coding.decode()} body does not decode: {exc}") \
                from None
    return feed


def _pieces(head: bytes, body: bytes) -> list[bytes]:
    if len(body) <= _ONE_WRITE:
        return [head + body]
    return [head, body]


def decoded(reply: Reply, max_bytes: int | None) -> Reply:
    """A reply the server compressed (over https, as asked; or over http, unasked), decoded
    with its output capped: a small gzip bomb must not inflate into gigabytes."""
    codings = ",".join(value.decode("latin-1") for name, value in reply.headers
                       if name.lower() == b"content-encoding")
    return Reply(reply.status, reply.headers, undone(reply.body, codings, max_bytes),
                 reply.reusable)


def undone(body: bytes | bytearray, codings: str, max_bytes: int | None) -> bytes | bytearray:
    """`body` with its Content-Encoding codings (in the order they were applied) undone."""
    for coding in reversed([c.strip().lower() for c in codings.split(",") if c.strip()]):
        body = inflate(body, coding, max_bytes)
    return body


def inflate(body: bytes | bytearray, coding: str, max_bytes: int | None) -> bytes | bytearray:
    """One content coding undone, never past `max_bytes` of output (ReplyTooLarge), as httpx
    does for the codings Switchyard asks for (gzip, deflate; identity and unknown ones pass)."""
    if coding == "gzip":
        stream = zlib.decompressobj(zlib.MAX_WBITS | 16)
    elif coding == "deflate":  # zlib-wrapped, or raw as some servers send it (as httpx)
        stream = zlib.decompressobj(zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
    else:
        return body
    # In pieces: one call with a limit grows its output buffer by doubling, twice the cap at
    # its peak; pieces hold at most the cap and one piece.
    pieces: list[bytes] = []
    held = 0
    try:
        while body:
            piece = stream.decompress(body, _INFLATE_PIECE)
            body = stream.unconsumed_tail
            held += len(piece)
            if max_bytes is not None and held > max_bytes:
                pieces.clear()  # not kept alive by the traceback of the failure below
                raise ReplyTooLarge(f"decoded reply larger than {max_bytes} bytes")
            pieces.append(piece)
            if stream.eof:
                break
        pieces.append(stream.flush())
        if max_bytes is not None and held + len(pieces[-1]) > max_bytes:
            pieces.clear()
            raise ReplyTooLarge(f"decoded reply larger than {max_bytes} bytes")
    except zlib.error as exc:
        raise httpx.DecodingError(f"{coding} body does not decode: {exc}") from None
    return b"".join(pieces)
