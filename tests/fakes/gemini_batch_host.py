"""The fake Gemini Batch API (tests/fakes/gemini_batch.py) on a real socket, for fleets of real
serve processes: it tells the test each batch create it accepted, who was in it, and whether
its reply reached the caller.

`hold_replies` models a create Google has accepted whose reply has not come back yet: the batch
exists upstream (it is listed and polled), but the create's reply waits until the test calls
`release()`. A caller that goes away meanwhile (a replica killed with -9) leaves that create
`orphaned`: its members are in a batch their replica never heard the name of.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from proxy.bench.loopback import LoopbackServer, client_left, on_own_loop, read_request
from tests.fakes.gemini import GEMINI_HOST
from tests.fakes.gemini_batch import FakeGeminiBatch

KEY = "fleet-gemini-key"


@dataclass
class Create:
    """One batch create the host accepted: its batch, and its members' keys (job ids)."""

    name: str
    members: list[str]
    orphaned: bool = False  # the caller left before the reply could be sent


@dataclass
class GeminiBatchHost(LoopbackServer):
    port: int = 0
    hold_replies: bool = False
    creates: list[Create] = field(default_factory=list)
    fake: FakeGeminiBatch = field(default_factory=lambda: FakeGeminiBatch(api_key=KEY))
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1beta"

    def members(self) -> list[str]:
        """Every member of every create, a member sent twice counted twice."""
        return [key for create in list(self.creates) for key in create.members]

    def release(self) -> None:
        """Send the held replies (thread-safe: the host runs on a loop of its own)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._released.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_request(reader)
                method, target = head.split(b" ", 2)[:2]
                reply = await self.fake.handle_async_request(httpx.Request(
                    method.decode(), f"https://{GEMINI_HOST}{target.decode()}",
                    headers=_headers(head), content=body))
                content = await reply.aread()
                if target.endswith(b":batchGenerateContent") and reply.status_code == 200:
                    create = self._accepted()
                    if self.hold_replies and await client_left(reader, until=self._released):
                        create.orphaned = True
                        return
                writer.write(_response(reply.status_code, content))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _accepted(self) -> Create:
        name = self.fake.order[-1]
        batch = self.fake.batches[name]
        create = Create(name, [item["metadata"]["key"] for item in batch.requests])
        self.creates.append(create)
        return create


def _headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines if line)]


def _response(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body


@contextlib.contextmanager
def gemini_batch_host() -> Iterator[GeminiBatchHost]:
    """The host on a loop of its own thread until the block ends."""
    host = GeminiBatchHost()
    with on_own_loop(host):
        yield host
