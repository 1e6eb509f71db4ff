"""An OpenAI-shaped image host on a real socket that counts the calls it is serving at once:
several serve processes share its `max_in_flight`, and it tells the fleet tests and
`switchyard bench fleet` the most it ever had. A call whose client went away (a replica killed
with -9) stops counting when its connection closes. It runs on a loop of its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from proxy.bench.hostile import images_body, json_reply, png_b64
from proxy.bench.loopback import LoopbackServer, client_left, on_own_loop, read_request


@dataclass
class CountingHost(LoopbackServer):
    delay_s: float = 0.0  # how long each call takes, read when it starts
    status: int = 200  # what each call answers: another status is OpenAI's error body
    retry_after: str | None = None  # an error's Retry-After header, when set
    port: int = 0
    now: int = 0  # calls being served
    peak: int = 0
    calls: int = 0
    answered: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, now)
    image: str = field(default_factory=lambda: png_b64(1024, 1024, "capped"))
    _server: asyncio.Server | None = None

    def peak_since(self, since: float) -> int:
        return max((n for at, n in list(self.history) if at >= since), default=0)

    def _count(self, change: int) -> None:
        self.now += change
        self.peak = max(self.peak, self.now)
        self.history.append((time.monotonic(), self.now))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                self.calls += 1
                self._count(+1)
                try:
                    left = await client_left(reader, self.delay_s)
                finally:
                    self._count(-1)
                if left:
                    return
                writer.write(self._reply())
                self.answered += 1
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _reply(self) -> bytes:
        if self.status == 200:
            return json_reply(images_body(self.image))
        body = b'{"error": {"message": "the host is broken", "type": "server_error"}}'
        extra = b"" if self.retry_after is None else \
            f"retry-after: {self.retry_after}\r\n".encode()
        return json_reply(body, extra).replace(b"200 OK", f"{self.status} Error".encode(), 1)


@contextlib.contextmanager
def counting_host() -> Iterator[CountingHost]:
    """The host on a loop of its own thread until the block ends."""
    host = CountingHost()
    with on_own_loop(host):
        yield host
