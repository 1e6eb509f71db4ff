"""Every upstream call is bounded (proxy.upstream.clients): a reply over max_reply_bytes, on the
wire or once decoded, and a reply that never completes within the call's timeout, end the call
as failures the router fails over from. On lean connections and on httpx's own path."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import zlib
from dataclasses import replace

import httpx
import pytest

from proxy.bench.hostile import gzip_bomb
from proxy.failures import Kind, UpstreamError
from proxy.providers.base import UpstreamCall
from proxy.upstream import clients, transport
from tests.test_transport import LIMITS, Script, Upstream, reply, run, send_call, upstream

CAP = 1024 * 1024


def capped_client() -> transport.Client:
    return transport.Client(LIMITS, httpx.Timeout(5.0), max_reply_bytes=CAP)


async def failure_of(client: httpx.AsyncClient, fake: Upstream, timeout_s: float = 5.0
                     ) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await clients.send(client, send_call(fake.url), timeout_s)
    return caught.value


async def endless_chunks(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(64):
        writer.write(b"10000\r\n" + b"0" * 0x10000 + b"\r\n")
        await writer.drain()


async def endless_close_delimited(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
    for _ in range(64):
        writer.write(b"0" * 0x10000)
        await writer.drain()


async def announced_huge(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 209715200\r\n\r\n")
    await writer.drain()


async def bomb(writer: asyncio.StreamWriter) -> None:
    writer.write(reply(gzip_bomb(16 * CAP), extra=b"content-encoding: gzip\r\n"))
    await writer.drain()


@pytest.mark.parametrize("script", [announced_huge, bomb, endless_close_delimited,
                                    endless_chunks],
                         ids=["content-length", "gzip-bomb", "close-delimited", "chunked"])
def test_an_oversized_reply_is_upstream_broken_on_lean_connections(script: Script) -> None:
    async def main() -> None:
        client = capped_client()
        async with upstream(script) as fake:
            failure = (await failure_of(client, fake)).failure
        assert failure.kind is Kind.UPSTREAM_BROKEN
        assert "ReplyTooLarge" in failure.message
        await client.aclose()
    run(main())


def test_a_multipart_calls_reply_is_capped_once_decoded() -> None:
    """Uploads (edits) go through httpx's request objects on the same lean connections: the
    bomb must be inflated with the cap there too, not by httpx whole."""
    async def main() -> None:
        client = capped_client()
        upload = UpstreamCall("POST", "", files=(("image", ("a.png", b"x" * 100, "image/png")),))
        async with upstream(bomb) as fake:
            tracemalloc.start()
            try:
                with pytest.raises(UpstreamError) as caught:
                    await clients.send(
                        client, replace(upload, url=fake.url + "/v1/images/edits"), 5.0)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert peak < 4 * CAP  # the bomb inflates to 16 x CAP
        assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN
        assert "ReplyTooLarge" in caught.value.failure.message
        await client.aclose()
    run(main())


def test_tiny_chunks_are_held_at_the_cost_of_their_bytes() -> None:
    """A chunk per byte must not cost an object per byte (~42 bytes held per byte sent)."""
    async def one_byte_chunks(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"1\r\nx\r\n" * 200_000 + b"0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        client = capped_client()
        async with upstream(one_byte_chunks) as fake:
            tracemalloc.start()
            try:
                reply = await clients.send(client, send_call(fake.url), 30.0)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert reply.body == b"x" * 200_000
        assert peak < 3 * 1024 * 1024  # the 1.4 MB sent, parsed: never 42 x 200 KB
        await client.aclose()
    run(main())


def test_a_reply_within_the_cap_decodes_as_before() -> None:
    body = b'{"ok": ' + b" " * (CAP // 2) + b"1}"
    packed = zlib.compress(body)
    gz = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    gzipped = gz.compress(body) + gz.flush()

    async def main() -> None:
        client = capped_client()
        async with upstream(reply(gzipped, extra=b"content-encoding: gzip\r\n"),
                            reply(packed, extra=b"content-encoding: deflate\r\n")) as fake:
            for _ in range(2):
                assert (await clients.send(client, send_call(fake.url), 5.0)).body == body
        await client.aclose()
    run(main())


def test_the_httpx_path_is_capped_too() -> None:
    """Clients on a transport of their own (tests' fakes, proxies, uploads) read the reply as
    a stream and stop at the cap."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"0" * (CAP + 1))

    async def main() -> None:
        client = transport.Capped(CAP, transport=httpx.MockTransport(handler))
        with pytest.raises(UpstreamError) as caught:
            await clients.send(client, send_call("http://fake"), 5.0)
        assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN
        assert "ReplyTooLarge" in caught.value.failure.message
        await client.aclose()
    run(main())


def test_a_drip_ends_at_the_calls_timeout() -> None:
    """A byte every 0.1 s is never silence, yet the whole reply is due within the timeout."""
    async def drip(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.1)

    async def main() -> None:
        client = capped_client()
        async with upstream(drip) as fake:
            started = time.monotonic()
            failure = (await failure_of(client, fake, timeout_s=0.5)).failure
            assert time.monotonic() - started < 2.0
        assert failure.kind is Kind.TIMEOUT
        await client.aclose()
    run(main())
