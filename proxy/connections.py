"""Deadlines and a header size cap on every client connection, inside uvicorn's HTTP/1.1
protocols (httptools or h11), which have neither beyond a keep-alive timer armed after a
response: without them a socket that never finishes its headers, stalls its body or stops
reading its response holds its memory and its task forever, and a 16 MB header is buffered.

A connection's clock runs only while it is the client's turn:
- reading headers: 408 and closed unless the blank line comes within header_s of the first
  byte (of the connection's start for its first request; closed silently if nothing came);
- reading a body: 408 (or a plain close once the response has begun) when no byte came for
  body_s, unless Switchyard itself stopped reading (flow control);
- idle after a response: closed after keep_alive_s (uvicorn's own timer, set to ours);
- a response the client does not take: dropped once the send buffer stayed full for body_s
  with less than DRAIN_STEP of it taken (a client reading slowly but steadily is served, however
  much Switchyard handed over in one send).
A header block over max_header_bytes is answered 431 before the parser buffers more of it.

On uvloop, httptools connections tell the app (ASGI scope extension WHOLE_SENDS) that a send
is kept by reference until it is written: a response may then hand over a big body in one send
(proxy/api/streamed.py) without a second copy of it waiting in the server.

One sweep a process checks every connection's clock each tick (a quarter of the shortest
limit, at most a second), so a request pays for no timer of its own: deadlines hold to
within a tick.
"""

from __future__ import annotations

import asyncio
import http
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import h11
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy import metrics
from proxy.api import errors
from proxy.api.streamed import WHOLE_SENDS
from proxy.config import Config

# After a 431 the rest of what the client sends is read and dropped this long before the
# socket closes: closed at once with unread data, it would be reset and the 431 lost.
LINGER_S = 2.0
HEADER_END = b"\r\n\r\n"
MAX_TICK_S = 1.0
# A client that takes this much of a response it was paused on restarts its send clock.
DRAIN_STEP = 256 * 1024

# What a connection reads now. Plain ints: an enum member costs ~0.3 µs a lookup on Python
# 3.11, and a request makes several.
NOTHING: Final = 0  # between requests, or the request is in and Switchyard answers
HEADERS: Final = 1
BODY: Final = 2


@dataclass(frozen=True, slots=True)
class Limits:
    keep_alive_s: float
    header_s: float
    body_s: float
    max_header_bytes: int

    @classmethod
    def of(cls, config: Config) -> Limits:
        return cls(config.keep_alive_timeout_s, config.header_timeout_s,
                   config.body_timeout_s, config.max_header_bytes)

    @property
    def tick_s(self) -> float:
        return min(MAX_TICK_S, self.keep_alive_s / 4, self.header_s / 4, self.body_s / 4)


class Cycle(Protocol):
    """What both uvicorn protocols' request cycles tell about the response."""

    response_started: bool
    response_complete: bool


def refusal(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, in OpenAI's error shape."""
    content = errors.body(errors.ApiError(status, message, code=code))
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(content)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + content


class Sweep:
    """This process's open connections, each checked once a tick while there are any."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.connections: set[Guarded] = set()
        self._next: asyncio.TimerHandle | None = None

    def add(self, connection: Guarded) -> None:
        self.connections.add(connection)
        if self._next is None:
            self._next = connection.loop.call_later(self.tick_s, self._tick, connection.loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in list(self.connections):
            connection.check(now)
        self._next = loop.call_later(self.tick_s, self._tick, loop) if self.connections \
            else None


class Guarded(asyncio.Protocol):
    """The clocks and the cap, over a uvicorn protocol (the class after this one in the MRO).
    Subclasses say which phase their parser is in (`_phase`) and give its request cycle."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    flow: FlowControl
    timeout_keep_alive_task: asyncio.TimerHandle | None
    _limits: Limits
    _sweep: Sweep
    _reading: int
    _began: float  # when the current request's first byte came
    _last_read: float
    _header_bytes: int
    _previous: bytes  # the last read of these headers: their blank line may straddle two
    _refused: bool
    _unread_since: float | None  # since when the client has taken nothing of a response
    _unsent_mark: int  # bytes waiting to be sent when that clock last started
    _keeps_sends: bool  # the loop's transports keep unsent data by reference (uvloop's)

    def guard(self, limits: Limits, sweep: Sweep) -> None:
        """Set up before uvicorn makes the connection."""
        self._limits, self._sweep = limits, sweep
        self._reading = NOTHING
        self._began = self._last_read = 0.0
        self._header_bytes = 0
        self._previous = b""
        self._refused = False
        self._unread_since = None
        self._unsent_mark = 0
        # asyncio's transports copy what they could not send yet into a buffer of their own.
        self._keeps_sends = type(self.loop).__module__.startswith("uvloop")

    def _phase(self) -> int:
        raise NotImplementedError

    def _cycle(self) -> Cycle | None:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A new connection has header_s for its first request, as in nginx or Go.
        self._reading, self._began = HEADERS, self.loop.time()
        self._sweep.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._sweep.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused header block: dropped
        now = self.loop.time()
        if self._reading == NOTHING:  # the first byte of a request
            self._reading, self._began, self._header_bytes = HEADERS, now, 0
            self._previous = b""
        if self._reading == HEADERS:
            counted = self._header_bytes + len(data)
            if counted > self._limits.max_header_bytes and self._over_cap(data):
                self._refuse_headers()
                return
            self._header_bytes = counted
            self._previous = data if len(data) >= 3 else self._previous[-3:] + data
        self._last_read = now
        super().data_received(data)
        self._reading = self._phase()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._unread_since = self.loop.time()
        self._unsent_mark = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unread_since = None

    def _over_cap(self, data: bytes) -> bool:
        """Whether the headers' blank line, with `data`, lies past max_header_bytes (or is not
        in it: they go on). Searched only once the count passes the cap."""
        tail = self._previous[-3:]
        end = (tail + data).find(HEADER_END)
        return end < 0 or self._header_bytes - len(tail) + end + len(HEADER_END) > \
            self._limits.max_header_bytes

    def _idle(self) -> bool:
        """No request of this connection waits for its response."""
        cycle = self._cycle()
        return cycle is None or cycle.response_complete

    def check(self, now: float) -> None:
        """The sweep's look at this connection: cut it off if its client is past a deadline."""
        limits = self._limits
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket: not ours
            self._sweep.connections.discard(self)
            return
        if self._unread_since is not None:
            unsent = self.transport.get_write_buffer_size()
            if self._unsent_mark - unsent >= DRAIN_STEP:  # taken, slowly: a new clock
                self._unread_since, self._unsent_mark = now, unsent
            elif now - self._unread_since > limits.body_s:
                # A close would wait for the send buffer to drain, which is what does not
                # happen.
                metrics.CONNECTIONS_CUT.labels("send_timeout").inc()
                self.transport.abort()
                return
        if self._refused or self.transport.is_closing():
            return
        phase = self._reading
        if phase == NOTHING:
            # After an early response, a body that ended later leaves no uvicorn timer.
            if self.timeout_keep_alive_task is None and self._idle() and \
                    now - self._last_read > limits.keep_alive_s:
                self.transport.close()
        elif self.flow.read_paused or (phase == HEADERS and not self._idle()):
            # Switchyard stopped reading, or still answers the request before (pipelining):
            # not the client's turn, so its clock waits.
            self._began = self._last_read = now
        elif phase == HEADERS:
            if now - self._began > limits.header_s:
                self._time_out("header_timeout", "the request's headers did not arrive within "
                                                 f"{limits.header_s:g} s")
        elif now - self._last_read > limits.body_s:
            self._time_out("body_timeout",
                           f"the request body stopped arriving for {limits.body_s:g} s")

    def _time_out(self, reason: str, message: str) -> None:
        if self._reading == HEADERS and not self._header_bytes:
            self.transport.close()  # a connection that never sent a byte: nothing to answer
            return
        metrics.CONNECTIONS_CUT.labels(reason).inc()
        cycle = self._cycle()
        if self._reading == HEADERS or cycle is None or not cycle.response_started:
            self.transport.write(refusal(408, message, "request_timeout"))
        self.transport.close()

    def _refuse_headers(self) -> None:
        metrics.CONNECTIONS_CUT.labels("headers_too_large").inc()
        self._refused = True
        if not self._idle():  # a pipelined request: a 431 would land inside another reply
            self.transport.close()
            return
        self.transport.write(refusal(
            431, f"the request's headers are larger than the limit of "
                 f"{self._limits.max_header_bytes} bytes", "request_headers_too_large"))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


class GuardedHttpTools(Guarded, HttpToolsProtocol):
    """httptools (llhttp) with the guard; its parser callbacks mark the phases."""

    def _phase(self) -> int:
        return self._reading

    def _cycle(self) -> Cycle | None:
        return self.cycle

    def on_headers_complete(self) -> None:
        self._reading = BODY
        if self._keeps_sends:  # (h11, not here, joins each send into new bytes)
            self.scope.setdefault("extensions", {})[WHOLE_SENDS] = {}
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading = NOTHING
        super().on_message_complete()


class GuardedH11(Guarded, H11Protocol):
    """h11 with the guard; the peer's state after each read gives the phase."""

    def _phase(self) -> int:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return BODY
        if state is h11.IDLE:  # a request line and headers under way, or nothing yet
            return self._reading if self._reading == HEADERS else NOTHING
        return NOTHING

    def _cycle(self) -> Cycle | None:
        return self.cycle

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._reading = self._phase()  # h11 goes on to the pipelined requests it holds


@dataclass(frozen=True, slots=True)
class GuardedProtocol:
    """What uvicorn calls for each connection in place of a protocol class (it only calls
    it): the parser `serve --http` chose, guarded by `limits`. A plain value, so that it
    reaches `serve --workers` processes, which get their uvicorn config pickled (each then
    sweeps its own connections: the sweep is empty until a connection comes)."""

    parser: str
    limits: Limits
    sweep: Sweep = field(compare=False, repr=False)

    def __call__(self, config: UvicornConfig, server_state: ServerState,
                 app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        protocol: GuardedH11 | GuardedHttpTools = (GuardedH11 if self.parser == "h11" else
                                                   GuardedHttpTools)(
            config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        protocol.guard(self.limits, self.sweep)
        # uvicorn's own keep-alive timer (after a response) keeps time for us; it only ever
        # passes this to call_later, which takes fractions of a second too.
        protocol.timeout_keep_alive = self.limits.keep_alive_s  # type: ignore[assignment]
        return protocol


def protocol(parser: str, limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's `http` argument for `serve --http PARSER`; auto is httptools (a dependency),
    as uvicorn's own auto would choose."""
    chosen = GuardedProtocol("h11" if parser == "h11" else "httptools", limits,
                             Sweep(limits.tick_s))
    return cast(type[asyncio.Protocol], chosen)  # uvicorn only calls it
