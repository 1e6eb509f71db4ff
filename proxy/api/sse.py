"""A streamed answer for hosts that deliver whole images: keep-alives while the run goes on,
then the answer's events.

The status line waits for the first byte that is due: if the run ends before the first
keep-alive, the client gets a plain error (in its surface's shape) or a 200 whose headers say
who served it and what it cost, as a non-streamed answer does; otherwise the stream starts
with keep-alives, and a failure comes as an error event. A host's partial images (a Relay)
go out as they arrive: the first starts the stream at once. A client that leaves cancels the
run (and with it the upstream call): no image delivered, nothing billed.
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
from proxy.domain import PartialImage

KEEPALIVE_S = 5.0  # how long the client waits for a first byte, and then between keep-alives


@dataclass(frozen=True, slots=True)
class Style:
    """How one surface writes its stream."""

    keepalive: bytes  # what keeps the connection busy, and every parser reads as nothing
    events: Callable[[Charged], Iterable[bytes]]  # the answer, billed
    failure: Callable[[ApiError], bytes]  # an error once the stream has begun


class Relay:
    """A streamed request's partial images between the host's driver (`put`, as they arrive)
    and the client's event stream (`take`). Only the first route to relay one is heard: the
    run is committed to it (proxy/routing/run.py)."""

    def __init__(self, render: Callable[[PartialImage], bytes]) -> None:
        self.render = render  # an image as the surface's event
        self.route: str | None = None
        self.ready = asyncio.Event()
        self._events: list[bytes] = []
        self._commit: Callable[[str], None] | None = None

    def on_commit(self, commit: Callable[[str], None]) -> None:
        self._commit = commit

    def put(self, route_id: str, image: PartialImage) -> bool:
        if self.route is None:
            self.route = route_id
            if self._commit is not None:
                self._commit(route_id)
        elif route_id != self.route:
            return False
        self._events.append(self.render(image))
        self.ready.set()
        return True

    def take(self) -> list[bytes]:
        taken, self._events = self._events, []
        self.ready.clear()
        return taken


class EventStream(Response):
    """text/event-stream for `work`, a request already admitted and paid for; the partial
    images of `relay` as they come."""

    media_type = "text/event-stream"

    def __init__(self, work: asyncio.Task[Charged], style: Style, headers: Mapping[str, str],
                 request_id: str, relay: Relay | None = None) -> None:
        self.work = work
        self.style = style
        self.relay = relay
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
        if self.work.done() and not self._relayed():  # a plain answer, headers and all
            done = self.work.result()  # a refusal is raised to the surface's handler
            given = {name for name, _ in self.raw_headers}  # the admission's, say
            self.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                 for k, v in done.headers.items()
                                 if k.lower().encode("latin-1") not in given]
            await self._start(send)
            await self._answer(send, done)
            return
        await self._start(send)
        while not self.work.done():
            if not await self._pass_on(send):
                await send(_more(self.style.keepalive))
            if not await self._wait(left):
                return
        await self._pass_on(send)  # relayed before the run ended
        await self._finish(send)

    async def _wait(self, left: asyncio.Future[None]) -> bool:
        """Until the run ends, a partial image comes or a keep-alive is due: False if the
        client left instead."""
        either: set[asyncio.Future[Any]] = {self.work, left}
        relayed = None if self.relay is None else asyncio.ensure_future(self.relay.ready.wait())
        if relayed is not None:
            either.add(relayed)
        try:
            await asyncio.wait(either, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if relayed is not None:
                relayed.cancel()
        return not left.done()

    def _relayed(self) -> bool:
        return self.relay is not None and self.relay.ready.is_set()

    async def _pass_on(self, send: Send) -> bool:
        """Send the partial images relayed since the last look; whether there were any."""
        if self.relay is None:
            return False
        images = self.relay.take()
        for event in images:
            await send(_more(event))
        return bool(images)

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
