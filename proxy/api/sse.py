"""A streamed answer for hosts that deliver whole images: keep-alives while the run goes on,
then the answer's events.

The status line waits for the first byte that is due: if the run ends before the first
keep-alive, the client gets a plain error (in its surface's shape) or a 200 whose headers say
who served it and what it cost, as a non-streamed answer does; otherwise the stream starts
with keep-alives, and a failure comes as an error event. A client that leaves cancels the run:
nothing delivered, nothing billed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.api.errors import ApiError, internal, log
from proxy.api.metering import Charged

KEEPALIVE_S = 5.0  # how long the client waits for a first byte, and then between keep-alives


@dataclass(frozen=True, slots=True)
class Style:
    """How one surface writes its stream."""

    keepalive: bytes  # what keeps the connection busy, and every parser reads as nothing
    events: Callable[[Charged], Iterable[bytes]]  # the answer, billed
    failure: Callable[[ApiError], bytes]  # an error once the stream has begun


class EventStream(Response):
    """text/event-stream for `work`, a request already admitted and paid for."""

    media_type = "text/event-stream"

    def __init__(self, work: asyncio.Task[Charged], style: Style, headers: Mapping[str, str],
                 request_id: str) -> None:
        self.work = work
        self.style = style
        self.request_id = request_id
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        left = asyncio.ensure_future(_disconnected(receive))
        try:
            await self._stream(left, send)
        except OSError:
            raise ClientDisconnect() from None  # the client went as we wrote: no one to tell
        finally:
            left.cancel()
            if not self.work.done():
                self.work.cancel()  # the run writes its cancelled ledger row itself
                self.work.add_done_callback(_retrieved)

    async def _stream(self, left: asyncio.Future[None], send: Send) -> None:
        if not await self._wait(left):
            return
        if self.work.done():  # within the first wait: a plain answer, headers and all
            done = self.work.result()  # a refusal is raised to the surface's handler
            self.raw_headers += [(k.encode("latin-1"), v.encode("latin-1"))
                                 for k, v in done.headers.items()]
            await self._start(send)
            await self._answer(send, done)
            return
        await self._start(send)
        while not self.work.done():
            await send(_more(self.style.keepalive))
            if not await self._wait(left):
                return
        await self._finish(send)

    async def _wait(self, left: asyncio.Future[None]) -> bool:
        """Until the run ends or a keep-alive is due: False if the client left instead."""
        either: set[asyncio.Future[Any]] = {self.work, left}
        await asyncio.wait(either, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
        return not left.done()

    async def _start(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})

    async def _finish(self, send: Send) -> None:
        try:
            done = self.work.result()
        except ApiError as exc:
            await send(_more(self.style.failure(exc)))
        except Exception as exc:
            await send(_more(self.style.failure(internal(exc))))
            # The type only (values may hold secrets), as for any unhandled error.
            log.error("unhandled %s in a stream (request %s)", type(exc).__name__,
                      self.request_id)
        else:
            await self._answer(send, done)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer(self, send: Send, done: Charged) -> None:
        for event in self.style.events(done):
            await send(_more(event))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await done.delivered()


def _more(body: bytes) -> dict[str, object]:
    return {"type": "http.response.body", "body": body, "more_body": True}


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request body was read before the stream)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _retrieved(task: asyncio.Task[Charged]) -> None:
    with contextlib.suppress(BaseException):
        task.result()
