"""A reply's body handed to a sink as it arrives on a lean connection (issue 19: streamed
events go from the host's socket to the client without httpx in between): every framing, the
connection kept when the reply ended cleanly, a refusing sink failing only its request, and a
compressed or an error reply read whole as before."""

from __future__ import annotations

import asyncio
import zlib

import httpx
import pytest

from tests.test_transport import Upstream, chunked, lean, reply, run, upstream

Heads = list[tuple[int, list[tuple[bytes, bytes]]]]


def sink_into(got: list[bytes], heads: Heads, only: int | None = 200):
    """A sink_for that takes bodies of status `only` (any with None) into `got`."""
    def sink_for(status: int, headers: list[tuple[bytes, bytes]]):
        heads.append((status, headers))
        return got.append if only is None or status == only else None
    return sink_for


async def stream(pool, fake: Upstream, sink_for) -> object:
    answer = await pool.exchange("POST", fake.url + "/v1/s", {"accept": "text/event-stream"},
                                 b"{}", 5.0, sink_for)
    assert answer is not None
    return answer


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_the_first_bytes_reach_the_sink_before_the_rest_is_sent(framing: str) -> None:
    first, rest = b"data: one\n\n", b"data: two\n\n"
    got: list[bytes] = []
    seen_first = asyncio.Event()

    async def script(writer: asyncio.StreamWriter) -> None:
        if framing == "length":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"content-length: %d\r\n\r\n" % (len(first) + len(rest)) + first)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        # The rest goes only once the first bytes were handed over: a client that waits for
        # the whole body before its sink sees anything never gets it (the test times out).
        await asyncio.wait_for(seen_first.wait(), 5)
        writer.write(rest if framing == "length" else b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        await writer.drain()

    def sink(piece: bytes) -> None:
        got.append(piece)
        seen_first.set()

    async def main() -> None:
        async with upstream(script, reply(b"next")) as fake, lean() as pool:
            answer = await stream(pool, fake, lambda status, headers: sink)
            assert b"".join(got) == first + rest
            assert (answer.status, answer.body, answer.reusable) == (200, b"", True)
            assert (await stream(pool, fake, None)).body == b"next"
            assert fake.connections == 1  # the streamed reply ended cleanly: kept alive
    run(main())


def test_a_close_delimited_stream_is_sunk_to_its_end() -> None:
    got: list[bytes] = []

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: a\n\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with upstream(script) as fake, lean() as pool:
            answer = await stream(pool, fake, sink_into(got, []))
            assert (b"".join(got), answer.body, answer.reusable) == (b"data: a\n\n", b"", False)
    run(main())


def test_a_sink_that_refuses_fails_its_request_and_drops_the_connection() -> None:
    class Refused(Exception):
        pass

    def refuse(piece: bytes) -> None:
        raise Refused("too much")

    async def main() -> None:
        async with upstream(chunked(b"data: a\n\n", b"data: b\n\n"), reply(b"next")) as fake, \
                lean() as pool:
            with pytest.raises(Refused):
                await stream(pool, fake, lambda status, headers: refuse)
            assert (await stream(pool, fake, None)).body == b"next"
            assert fake.connections == 2
    run(main())


def test_a_reply_the_sink_declines_is_read_whole() -> None:
    got: list[bytes] = []
    heads: Heads = []

    async def main() -> None:
        async with upstream(reply(b'{"error": 1}', status=429)) as fake, lean() as pool:
            answer = await stream(pool, fake, sink_into(got, heads))
            assert (answer.status, bytes(answer.body), got) == (429, b'{"error": 1}', [])
            assert heads and heads[0][0] == 429
    run(main())


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_stream_is_inflated_into_the_sink_as_it_arrives(coding: str) -> None:
    """A host that compresses its event stream though asked not to: its events still reach
    the sink as they come (read whole, partial images waited and counted against the cap)."""
    first, rest = b"data: one\n\n", b"data: two\n\n"
    packer = zlib.compressobj(wbits=zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS)
    head_part = packer.compress(first) + packer.flush(zlib.Z_SYNC_FLUSH)
    tail_part = packer.compress(rest) + packer.flush()
    got: list[bytes] = []
    seen_first = asyncio.Event()

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"content-encoding: %s\r\ncontent-length: %d\r\n\r\n"
                     % (coding.encode(), len(head_part) + len(tail_part)) + head_part)
        await writer.drain()
        await asyncio.wait_for(seen_first.wait(), 5)
        writer.write(tail_part)
        await writer.drain()

    def sink(piece: bytes) -> None:
        got.append(piece)
        if b"".join(got) == first:
            seen_first.set()

    async def main() -> None:
        async with upstream(script) as fake, lean() as pool:
            answer = await stream(pool, fake, lambda status, headers: sink)
            assert (b"".join(got), bytes(answer.body)) == (first + rest, b"")
    run(main())


def test_a_stream_in_an_unknown_coding_is_read_whole() -> None:
    got: list[bytes] = []
    heads: Heads = []

    async def main() -> None:
        async with upstream(reply(b"data: x\n\n", extra=b"content-encoding: br\r\n")) as fake, \
                lean() as pool:
            answer = await stream(pool, fake, sink_into(got, heads, only=None))
            assert (got, heads, bytes(answer.body)) == ([], [], b"data: x\n\n")
    run(main())


def test_a_stream_cut_off_mid_body_is_a_transport_error() -> None:
    got: list[bytes] = []

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"content-length: 100\r\n\r\ndata: a\n\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with upstream(script) as fake, lean() as pool:
            with pytest.raises(httpx.RemoteProtocolError):
                await stream(pool, fake, sink_into(got, []))
            assert got == [b"data: a\n\n"]  # what arrived was handed over before the cut
    run(main())
