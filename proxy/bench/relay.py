"""The overhead benchmark's floor: a store-and-forward HTTP relay that does nothing else.

Any proxy that must see a whole reply before it answers (to check it, fail over, bill it)
pays to receive the upstream's bytes and then send them again. This relay pays exactly that
and nothing more: per client connection, one upstream connection; each request is forwarded
as it came, each reply read whole (by Content-Length, straight into one buffer) and written
back. No parsing beyond the framing, no auth, no ledger, no flow control. The benchmark
measures it beside Switchyard, so Switchyard's own cost is what it adds over this relay, on the
same machine at the same moment.

It runs in its own process (`python -m proxy.bench.relay --upstream-port P [--ca-file F]
[--loop uvloop|asyncio]`, the event loop Switchyard runs on), prints its port on the first line
of stdout, and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
from collections.abc import Sequence
from typing import cast

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")
_HEAD_END = b"\r\n\r\n"
SCRATCH = 1 << 16


def _framed(pending: bytearray) -> tuple[bytes, int] | None:
    """(head, body length) once `pending` holds a whole head."""
    end = pending.find(_HEAD_END)
    if end < 0:
        return None
    head = bytes(pending[:end + 4])
    found = _LENGTH.search(head)
    return head, int(found.group(1)) if found else 0


class _Upstream(asyncio.BufferedProtocol):
    """The connection to the upstream: a reply's body is received straight into one buffer of
    its announced size, as Switchyard's own client does, so the floor is not inflated by
    copies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.scratch = memoryview(bytearray(SCRATCH))
        self.pending = bytearray()
        self.head = b""
        self.body: memoryview | None = None
        self.got = 0
        self.reply: asyncio.Future[tuple[bytes, memoryview]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.body[self.got:] if self.body is not None else self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self.body is None:
            self.pending += self.scratch[:nbytes]
            if (framed := _framed(self.pending)) is None:
                return
            self.head, length = framed
            rest = self.pending[len(self.head):]
            self.body, self.got, self.pending = memoryview(bytearray(length)), len(rest), rest
            self.body[:len(rest)] = rest
        else:
            self.got += nbytes
        if self.got >= len(self.body) and self.reply is not None:
            self.reply.set_result((self.head, self.body))
            self.body, self.pending = None, bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("the upstream closed"))


class _Client(asyncio.Protocol):
    """A client's connection: each whole request goes to its own upstream connection, and the
    whole reply comes back."""

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        self.port, self.tls = port, tls
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()
        self.requests: asyncio.Queue[bytes] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.task = asyncio.get_running_loop().create_task(self._forward())

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while (framed := _framed(self.pending)) is not None:
            size = len(framed[0]) + framed[1]
            if len(self.pending) < size:
                return
            self.requests.put_nowait(bytes(self.pending[:size]))
            del self.pending[:size]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _forward(self) -> None:
        loop = asyncio.get_running_loop()
        upstream_transport, upstream = await loop.create_connection(
            _Upstream, "127.0.0.1", self.port, ssl=self.tls)
        try:
            while True:
                request = await self.requests.get()
                upstream.reply = loop.create_future()
                upstream_transport.write(request)
                head, body = await upstream.reply
                assert self.transport is not None
                self.transport.writelines([head, body])
        except ConnectionError:
            if self.transport is not None:
                self.transport.close()
        finally:
            upstream_transport.close()


async def serve(upstream_port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port, tls), "127.0.0.1", 0,
                                      backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.bench.relay")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--ca-file", help="the upstream is on https, with this certificate")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="asyncio")
    args = parser.parse_args(argv)
    tls = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    try:
        run(serve(args.upstream_port, tls))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
