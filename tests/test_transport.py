"""The lean HTTP/1.1 transport (proxy.upstream.transport, http1) against a scripted server on a
real loopback socket: bodies by Content-Length, chunked and close-delimited, keep-alive reuse,
and every way a reply can go wrong mapped to the same failure class httpx's would get."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from proxy.failures import Kind, UpstreamError
from proxy.providers.base import UpstreamCall
from proxy.upstream import clients, transport

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
Answer = bytes | Script
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


def reply(body: bytes = b"{}", status: int = 200, extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n").encode() + extra + b"\r\n" + body


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n" + \
        trailer + b"\r\n"


@dataclass
class Seen:
    head: bytes
    body: bytes


@dataclass
class Upstream:
    """A scripted HTTP/1.1 server: request i (over any connection) gets answers[i]."""

    answers: list[Answer]
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    url: str = ""
    alpn: list[str | None] = field(default_factory=list)  # per TLS connection: the protocol
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    readers: list[asyncio.StreamReader] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if (tls := writer.get_extra_info("ssl_object")) is not None:
            self.alpn.append(tls.selected_alpn_protocol())
        self._writers.append(writer)
        self.readers.append(reader)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while not writer.is_closing():
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(Seen(head, await reader.readexactly(length)))
                answer = self.answers[len(self.requests) - 1]
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(writer)


@contextlib.asynccontextmanager
async def upstream(*answers: Answer, tls: ssl.SSLContext | None = None,
                   ) -> AsyncIterator[Upstream]:
    """The scripted server on 127.0.0.1; with `tls` (a server context) it speaks https."""
    fake = Upstream(list(answers))
    server = await asyncio.start_server(fake._serve, "127.0.0.1", 0, ssl=tls)
    scheme = "https" if tls else "http"
    fake.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        server.close()
        for writer in fake._writers:
            writer.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def lean(limits: httpx.Limits = LIMITS, tls: ssl.SSLContext | None = None,
               ) -> AsyncIterator[transport.LeanTransport]:
    client = transport.Client(limits, httpx.Timeout(5.0), tls)
    try:
        yield client.lean
    finally:
        await client.aclose()


async def post(pool: transport.LeanTransport, url: str, body: bytes = b"{}",
               timeout_s: float = 5.0) -> transport.Reply:
    answer = await pool.exchange("POST", url + "/v1/x?a=1", {"content-type": "application/json"},
                                 body, timeout_s)
    assert answer is not None
    return answer


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def close_after(data: bytes) -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()
    return script


def test_keep_alive_reuses_one_connection() -> None:
    async def main() -> None:
        async with upstream(reply(b'{"a":1}'), reply(b'{"b":2}'), reply(b"3")) as fake, \
                lean() as pool:
            bodies = [(await post(pool, fake.url)).body for _ in range(3)]
            assert bodies == [b'{"a":1}', b'{"b":2}', b"3"]
            assert fake.connections == 1
    run(main())


@pytest.mark.parametrize("size", [0, 1, 200_000, 5_000_000])
def test_a_content_length_body_arrives_whole(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def main() -> None:
        async with upstream(reply(body), reply(b"next")) as fake, lean() as pool:
            got = await post(pool, fake.url)
            assert (got.status, got.body, got.reusable) == (200, body, True)
            assert (await post(pool, fake.url)).body == b"next"
            assert fake.connections == 1
    run(main())


def test_a_chunked_reply_is_decoded_and_keeps_the_connection() -> None:
    async def main() -> None:
        answers = (chunked(b'{"data":', b"[1,2]", b"}", trailer=b"x-sum: 9\r\n"), reply(b"ok"))
        async with upstream(*answers) as fake, lean() as pool:
            got = await post(pool, fake.url)
            assert got.body == b'{"data":[1,2]}' and got.reusable
            assert (await post(pool, fake.url)).body == b"ok"
            assert fake.connections == 1
    run(main())


def test_a_close_delimited_reply_is_read_to_the_end_and_not_reused() -> None:
    async def main() -> None:
        raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"y" * 100_000
        async with upstream(close_after(raw), reply(b"again")) as fake, lean() as pool:
            got = await post(pool, fake.url)
            assert got.body == b"y" * 100_000 and not got.reusable
            assert (await post(pool, fake.url)).body == b"again"
            assert fake.connections == 2
    run(main())


@pytest.mark.parametrize(("answer", "message"), [
    (reply(b"x" * 5000)[:-2000], "complete message body"),  # closed mid-body
    (b"", "without sending a response"),  # closed before any reply
    (reply(b"x" * 100, status=200).replace(b"HTTP/1.1", b"HTTP/9"), "status line"),
    (chunked(b"abc").replace(b"3;ext", b"zz;ext"), "chunk size"),
    (chunked(b"abc").replace(b"3;ext", b"0x3;ext"), "chunk size"),
    (chunked(b"abc").replace(b"encoding: chunked", b"encoding: chunked\r\ncontent-length: 3"),
     "both"),
    (reply(b"12345").replace(b"content-length: 5", b"content-length: 5, 6"), "Content-Length"),
])
def test_a_broken_reply_is_a_classified_transport_error(answer: bytes, message: str) -> None:
    async def main() -> None:
        async with upstream(close_after(answer)) as fake, lean() as pool:
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await post(pool, fake.url)
            assert not pool._idle.get((False, "127.0.0.1", int(fake.url.rsplit(":", 1)[1])))
    run(main())


def send_call(url: str) -> UpstreamCall:
    return UpstreamCall("POST", url + "/v1/images/generations", {"authorization": "Bearer k"},
                        json={"prompt": "p"})


@pytest.mark.parametrize(("answer", "kind"), [
    (reply(b"x" * 5000)[:-2000], Kind.UPSTREAM_BROKEN),
    (b"", Kind.UPSTREAM_BROKEN),
])
def test_flows_send_maps_a_connection_closed_mid_body(answer: bytes, kind: Kind) -> None:
    async def main() -> None:
        client = transport.Client(LIMITS, httpx.Timeout(5.0))
        async with upstream(close_after(answer)) as fake:
            with pytest.raises(UpstreamError) as caught:
                await clients.send(client, send_call(fake.url), 5.0)
            assert caught.value.failure.kind is kind
        await client.aclose()
    run(main())


def test_silence_times_out_as_timeout() -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def main() -> None:
        client = transport.Client(LIMITS, httpx.Timeout(5.0))
        async with upstream(never) as fake:
            with pytest.raises(UpstreamError) as caught:
                await clients.send(client, send_call(fake.url), 0.2)
            assert caught.value.failure.kind is Kind.TIMEOUT
            assert "ReadTimeout" in caught.value.failure.message
        await client.aclose()
    run(main())


def test_a_slow_but_steady_reply_is_not_a_timeout() -> None:
    """The timeout is for silence (as httpx's read timeout), not for the whole reply."""
    async def trickle(writer: asyncio.StreamWriter) -> None:
        data = reply(b"z" * 40)
        for start in range(0, len(data), 10):
            writer.write(data[start:start + 10])
            await writer.drain()
            await asyncio.sleep(0.05)

    async def main() -> None:
        async with upstream(trickle) as fake, lean() as pool:
            assert (await post(pool, fake.url, timeout_s=0.3)).body == b"z" * 40
    run(main())


def test_silence_after_some_bytes_still_times_out() -> None:
    async def stall(writer: asyncio.StreamWriter) -> None:
        writer.write(reply(b"z" * 40)[:30])
        await writer.drain()
        await asyncio.sleep(0.25)
        writer.write(b"more")  # progress, then silence until the client gives up
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        async with upstream(stall) as fake, lean() as pool:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ReadTimeout):  # not the test's own TimeoutError
                await asyncio.wait_for(post(pool, fake.url, timeout_s=0.2), 2.0)
            assert asyncio.get_running_loop().time() - started < 1.0
    run(main())


def test_a_refused_connection_is_overloaded() -> None:
    async def main() -> None:
        async with upstream() as fake:
            url = fake.url
        client = transport.Client(LIMITS, httpx.Timeout(5.0))
        with pytest.raises(UpstreamError) as caught:
            await clients.send(client, send_call(url), 2.0)
        assert caught.value.failure.kind is Kind.OVERLOADED
        await client.aclose()
    run(main())


def test_interim_replies_head_and_no_content() -> None:
    async def main() -> None:
        interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + reply(b"final")
        head_only = reply(b"12345")[:-5]  # a HEAD reply announces a body it does not send
        answers = (interim, head_only, b"HTTP/1.1 204 No Content\r\n\r\n", reply(b"end"))
        async with upstream(*answers) as fake, lean() as pool:
            assert (await post(pool, fake.url)).body == b"final"
            head = await pool.exchange("HEAD", fake.url + "/", {}, None, 5.0)
            assert head is not None and head.body == b"" and head.reusable
            assert (await post(pool, fake.url)).status == 204
            assert (await post(pool, fake.url)).body == b"end"
            assert fake.connections == 1
    run(main())


def test_bytes_after_the_body_retire_the_connection() -> None:
    async def main() -> None:
        async with upstream(reply(b"one") + b"junk", reply(b"two")) as fake, lean() as pool:
            first = await post(pool, fake.url)
            assert first.body == b"one"
            await asyncio.sleep(0.05)
            assert (await post(pool, fake.url)).body == b"two"
            assert fake.connections == 2
    run(main())


def test_a_compressed_reply_is_decoded() -> None:
    async def main() -> None:
        packed = gzip.compress(b'{"big": true}')
        async with upstream(reply(packed, extra=b"content-encoding: gzip\r\n")) as fake, \
                lean() as pool:
            assert (await post(pool, fake.url)).body == b'{"big": true}'
    run(main())


def test_the_request_is_written_as_httpx_would() -> None:
    async def main() -> None:
        async with upstream(reply(), reply()) as fake, lean() as pool:
            await pool.exchange("POST", fake.url + "/v1/a%20b?x=1&y=2",
                                {"Authorization": "Bearer k", "user-agent": "mine"},
                                b'{"p":1}', 5.0)
            await pool.exchange("GET", fake.url + "/poll", {}, None, 5.0)
            post_head, get_head = (r.head.decode() for r in fake.requests)
            assert post_head.startswith("POST /v1/a%20b?x=1&y=2 HTTP/1.1\r\n")
            lines = post_head.lower().split("\r\n")
            for line in (f"host: {fake.url[7:]}", "authorization: bearer k", "user-agent: mine",
                         "content-length: 7", "accept-encoding: identity"):
                assert line in lines
            assert fake.requests[0].body == b'{"p":1}'
            assert get_head.startswith("GET /poll HTTP/1.1\r\n")
            assert "content-length" not in get_head.lower()
    run(main())


@pytest.mark.parametrize("url", [
    "http://user:pw@example.com/", "http://example.com/a b", "http://exämple.com/",
    "http://example.com:99999/", "ftp://example.com/", "HTTPS://example.com/",
    "https://a..b/", "https://" + "x" * 64 + ".com/", "https://example.com./",
])
def test_urls_httpx_must_handle_are_not_lean(url: str) -> None:
    assert transport.parse_target(url) is None


@pytest.mark.parametrize(("url", "origin", "authority"), [
    ("http://Example.com:80/x", (False, "example.com", 80), "example.com"),
    ("http://example.com:8080/x", (False, "example.com", 8080), "example.com:8080"),
    ("https://api.example.com/v1", (True, "api.example.com", 443), "api.example.com"),
    ("https://api.example.com:443/v1", (True, "api.example.com", 443), "api.example.com"),
    ("https://127.0.0.1:8443/", (True, "127.0.0.1", 8443), "127.0.0.1:8443"),
    ("https://[::1]/", (True, "::1", 443), "[::1]"),
])
def test_a_target_is_its_origin_and_the_host_header_httpx_writes(
        url: str, origin: tuple[bool, str, int], authority: str) -> None:
    target = transport.parse_target(url)
    assert target is not None and (target.origin, target.authority) == (origin, authority)
    assert httpx.Request("GET", url).headers["host"] == authority


@pytest.mark.parametrize("headers", [{"x-a": "1\r\nx-b: 2"}, {"bad name": "1"}, {"x": "é"}])
def test_headers_httpx_must_judge_are_not_lean(headers: dict[str, str]) -> None:
    target = transport.parse_target("http://example.com/")
    assert target is not None
    assert transport.encode_head("POST", target, headers.items(), 0) is None
