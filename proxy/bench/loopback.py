"""Plumbing shared by the fake hosts the benchmarks and tests run on loopback: a server on
127.0.0.1, reading one HTTP/1.1 request off a stream, an event loop of its own thread, and an
in-process fake host (an httpx transport) served on a socket for other processes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The head (request line and headers) and the Content-Length body of the next request;
    asyncio.IncompleteReadError when the client closed the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


async def client_left(reader: asyncio.StreamReader, timeout_s: float | None = None,
                      until: asyncio.Event | None = None) -> bool:
    """Wait out `timeout_s` (or until `until` is set, whichever comes first); True if the
    client hung up meanwhile (a replica killed with -9, a caller that gave up)."""
    eof = asyncio.ensure_future(reader.read(1))
    waits: list[asyncio.Future[Any]] = [eof]
    if until is not None:
        waits.append(asyncio.ensure_future(until.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return eof.done() and not eof.exception() and eof.result() == b""
    finally:
        for waiting in waits:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await waiting


class Server(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class LoopbackServer:
    """A server on 127.0.0.1 answering each connection with `_serve`; `port` 0 picks a free
    one. Subclasses (dataclasses) declare `port: int = 0` and `_server = None`."""

    port: int
    _server: asyncio.Server | None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class TransportHost(LoopbackServer):
    """An httpx transport (a fake host of proxy.bench.batch_hosts, which counts its calls and
    draws its latencies) answering on a socket, so Switchyard processes of their own can call
    it. Each reply is whole, with a content-length."""

    transport: httpx.AsyncBaseTransport
    port: int = 0
    _server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_request(reader)
                method, target = head.split(b" ", 2)[:2]
                request = httpx.Request(method.decode(), f"http://127.0.0.1:{self.port}"
                                        f"{target.decode()}", content=body)
                response = await self.transport.handle_async_request(request)
                content = await response.aread()
                writer.write(b"HTTP/1.1 %d Reply\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s"
                             % (response.status_code, len(content), content))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.contextmanager
def on_own_loop(server: Server) -> Iterator[None]:
    """`server` started on a new event loop in a thread of its own, until the block ends (then
    closed, and the loop with it: its sockets are not left for the garbage collector)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
