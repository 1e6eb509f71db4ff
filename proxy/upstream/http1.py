"""One HTTP/1.1 client connection as an asyncio BufferedProtocol: write a request, read its reply.

Why not httpcore: an image reply is megabytes, and httpcore hands it over in 64 KB chunks that
httpx then joins (two copies, a few hundred small blocks) behind several layers of Python per
chunk. Here a Content-Length body is received by the kernel straight into one buffer of the
announced size; chunked and close-delimited bodies are decoded too, so a reply never has to be
sent twice. Over TLS, asyncio's SSL transport decrypts straight into those same buffers.
Failures raise httpx's exception classes, so failures.from_transport classifies them exactly as
it classifies httpcore's. A reply is never held past `max_body` bytes: an announced length over
it fails before a byte is buffered, any other body as soon as it grows past it.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httpx

from proxy.upstream.framing import (
    MAX_HEAD,
    Framing,
    Head,
    body_framing,
    chunk_size,
    parse_head,
    short_line,
)

PIECE = 64 * 1024  # a chunked or close-delimited body is kept in pieces of about this size
SCRATCH = 64 * 1024  # the receive buffer for everything but a Content-Length body
# A Content-Length body this big is received into its own anonymous mapping: its memory is
# taken only as bytes arrive and given back the moment they are copied out, where a heap
# buffer is zeroed (taken) whole up front. Smaller bodies stay on the heap, whose recycled
# pages cost no page faults (about 0.3 ms per MB on a VM).
MAPPED = 4 * 1024 * 1024
_NO_BODY = frozenset({204, 304})
# Where a streamed reply's body goes as it arrives, if anywhere: given the status and headers,
# a sink for the body's bytes, or None to receive the body whole as usual.
Sink = Callable[[bytes], None]
SinkFor = Callable[[int, list[tuple[bytes, bytes]]], Sink | None]


class ReplyTooLarge(httpx.RemoteProtocolError):
    """The upstream's reply is bigger than Switchyard takes (config `max_reply_bytes`)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response. `reusable`: the connection may carry another request."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | bytearray  # a bytearray when received in place (no copy)
    reusable: bool


class Connection(asyncio.BufferedProtocol):
    """One connection; `request` sends one request and waits for its whole reply."""

    def __init__(self, max_body: int | None = None) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._scratch = memoryview(bytearray(SCRATCH))
        self._pending = bytearray()  # received, not yet parsed (head, chunk framing)
        self._framing = Framing.DONE
        self._head: Head | None = None
        # CHUNKED and CLOSE bodies, as received: pieces joined once at the end (a growing
        # bytearray would copy itself as it grows, twice the memory at the worst moment).
        self._pieces: list[bytes] = []
        self._piece = bytearray()  # small pieces gathered up to PIECE (one object per 64 KB)
        self._held = 0  # bytes in _pieces and _piece
        self._fixed: mmap.mmap | bytearray | None = None  # a LENGTH body, received in place
        self._body_view: memoryview | None = None  # where the kernel writes the LENGTH body
        self._got = 0
        # CHUNKED: bytes left of this chunk's data; -1 size line; -2 trailers; -3 its CRLF
        self._chunk_left = -1
        self._head_only = False
        self._sink_for: SinkFor | None = None
        self._sink: Sink | None = None
        self._left = 0  # COUNTED: bytes of the body still to come
        self._seen = 0  # bytes of this reply received so far
        self._progress = False  # bytes came (or left) since the timer was last armed
        self._unsent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[Reply] | None = None

    # --- the exchange --------------------------------------------------------------------

    async def request(self, data: list[bytes], head_only: bool, timeout_s: float | None,
                      sink_for: SinkFor | None = None) -> Reply:
        """Send `data` (the encoded request) and return the reply; no silence lasts longer
        than `timeout_s` (ReadTimeout, or WriteTimeout while the request is unsent). When
        `sink_for` gives a sink for the reply's head, the body goes there as it arrives (the
        reply's own body is then empty); a sink that raises fails the request."""
        assert self.transport is not None and self._waiter is None
        if self.closed:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        self._waiter = waiter
        self._framing, self._head, self._head_only, self._seen = Framing.HEAD, None, head_only, 0
        self._sink_for, self._sink = sink_for, None
        for piece in data:
            self.transport.write(piece)
        self._progress, self._unsent = False, self.transport.get_write_buffer_size()
        if timeout_s is not None:
            self._timer = loop.call_later(timeout_s, self._check_progress, timeout_s)
        try:
            return await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._waiter = None
            self._sink_for = self._sink = None
            if self._framing is not Framing.DONE:
                self.close()  # cancelled or failed mid-reply: its bytes would confuse the next

    def close(self) -> None:
        """Close at once: nothing unsent is worth waiting for, and over TLS no close_notify is
        exchanged (as httpcore), so a server that stops answering cannot hold the socket."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        # What a cut-off reply had received goes now: the failure that cut it may live on (in
        # a traceback's reference cycle) until the garbage collector's next turn.
        self._pieces, self._piece, self._held, self._pending = [], bytearray(), 0, bytearray()
        self._body_view = self._fixed = None

    def _check_progress(self, timeout_s: float) -> None:
        transport = self.transport
        if self._waiter is None or self._waiter.done() or transport is None:
            return
        unsent = transport.get_write_buffer_size()
        if self._progress or unsent < self._unsent:
            self._progress, self._unsent = False, unsent
            self._timer = asyncio.get_running_loop().call_later(
                timeout_s, self._check_progress, timeout_s)
            return
        self._fail((httpx.WriteTimeout if unsent else httpx.ReadTimeout)("timed out"))

    def _keep(self, piece: bytes | bytearray) -> None:
        """Part of a CHUNKED or CLOSE body; past `max_body` the reply is refused. Small parts
        (a chunk per byte) are gathered, so a part costs its bytes, not an object. With a sink,
        the part goes there at once (the sink bounds what it keeps)."""
        if self._sink is not None:
            self._sink(bytes(piece))
            return
        self._held += len(piece)
        if self.max_body is not None and self._held > self.max_body:
            raise self._too_large()
        self._piece += piece
        if len(self._piece) >= PIECE:
            self._pieces.append(bytes(self._piece))
            self._piece.clear()

    def _too_large(self) -> ReplyTooLarge:
        return ReplyTooLarge(f"reply larger than {self.max_body} bytes")

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _take_body(self) -> bytes | bytearray:
        """The received body; the buffer is let go at once (an idle connection must not hold
        on to the last reply). A heap buffer is handed over as it is, a bytearray (copying
        a 1.4 MB image reply cost a tenth of its CPU); a mapping is copied out, so its pages
        go back now."""
        if self._body_view is None:
            self._pieces.append(bytes(self._piece))
            body = b"".join(self._pieces)
            self._pieces, self._piece, self._held = [], bytearray(), 0
            return body
        fixed = self._fixed
        # Released, not closed: the transport may still hold the slice it received into; a
        # mapping is unmapped as soon as the last view of it goes.
        taken = fixed if isinstance(fixed, bytearray) else bytes(self._body_view)
        self._body_view.release()
        self._body_view = self._fixed = None
        return taken

    def _finish(self, body: bytes | bytearray) -> None:
        assert self._head is not None
        head, self._framing = self._head, Framing.DONE
        reusable = head.keep_alive and not self._pending and not self.closed
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Reply(head.status, head.headers, body, reusable))

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_view is not None:
            return self._body_view[self._got:]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._progress = True
        self._seen += nbytes
        if self._body_view is not None:
            self._got += nbytes
            if self._got == len(self._body_view):
                self._finish(self._take_body())
            return
        self._pending += self._scratch[:nbytes]
        try:
            self._parse()
        except Exception as exc:  # a malformed reply, or a sink that refused its bytes
            self._fail(exc)

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._framing is Framing.CLOSE and exc is None:
            self._finish(b"" if self._sink is not None else self._take_body())
        elif isinstance(exc, OSError):
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        elif self._seen == 0:
            self._fail(httpx.RemoteProtocolError("Server disconnected without sending a "
                                                 "response."))
        else:
            self._fail(httpx.RemoteProtocolError("peer closed connection without sending "
                                                 "complete message body"))

    # --- parsing -------------------------------------------------------------------------

    def _parse(self) -> None:
        while True:
            if self._waiter is None or self._waiter.done() or self._framing is Framing.DONE:
                if self._pending:  # bytes nobody asked for: this connection is not reusable
                    self.close()
                return
            if self._framing is Framing.HEAD:
                if not self._parse_head():
                    return
            elif self._framing is Framing.CHUNKED:
                if not self._parse_chunks():
                    return
            elif self._framing is Framing.COUNTED:
                take = min(self._left, len(self._pending))
                if take:
                    self._keep(self._pending[:take])
                    del self._pending[:take]
                    self._left -= take
                if self._left:
                    return
                self._finish(b"")
            else:  # CLOSE: the body is everything until the server closes
                if self._pending:
                    self._keep(self._pending)
                    self._pending.clear()
                return

    def _parse_head(self) -> bool:
        end = self._pending.find(b"\r\n\r\n")
        if end < 0:
            if len(self._pending) > MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too long")
            return False
        head = parse_head(bytes(self._pending[:end]))
        del self._pending[:end + 4]
        if 100 <= head.status < 200:
            return True  # an interim response (103 Early Hints): the real one follows
        self._head = head
        self._start_body(head)
        return True

    def _start_body(self, head: Head) -> None:
        if self._head_only or head.status in _NO_BODY:
            self._finish(b"")
            return
        framing, length = body_framing(head.headers)
        self._framing = framing
        if self._sink_for is not None:
            self._sink = self._sink_for(head.status, head.headers)
        if framing is Framing.LENGTH and self._sink is not None:
            self._framing, self._left = Framing.COUNTED, length
        elif framing is Framing.CHUNKED:
            self._pieces, self._piece, self._held, self._chunk_left = [], bytearray(), 0, -1
        elif framing is Framing.LENGTH:
            if self.max_body is not None and length > self.max_body:
                raise self._too_large()
            self._fixed = mmap.mmap(-1, length) if length >= MAPPED else bytearray(length)
            body_view = self._body_view = memoryview(self._fixed)
            self._got = min(length, len(self._pending))
            body_view[:self._got] = self._pending[:self._got]
            del self._pending[:self._got]
            if self._got == length:
                self._finish(self._take_body())
        else:  # the connection ends the body, so it cannot carry another request
            self._head = Head(head.status, head.headers, keep_alive=False)

    def _parse_chunks(self) -> bool:
        pending = self._pending
        while True:
            if self._chunk_left == -1:  # the size line
                end = pending.find(b"\r\n")
                if end < 0:
                    return short_line(pending)
                size = chunk_size(bytes(pending[:end]))
                del pending[:end + 2]
                self._chunk_left = size if size else -2
            elif self._chunk_left == -2:  # trailers, up to an empty line
                end = pending.find(b"\r\n")
                if end < 0:
                    return short_line(pending)
                del pending[:end + 2]
                if end == 0:
                    self._finish(self._take_body())
                    return True
            elif self._chunk_left == -3:  # the CRLF after a chunk's data
                if len(pending) < 2:
                    return False
                if pending[:2] != b"\r\n":
                    raise httpx.RemoteProtocolError("malformed chunked body")
                del pending[:2]
                self._chunk_left = -1
            else:  # chunk data, kept as it comes: pending never holds a whole big chunk
                take = min(self._chunk_left, len(pending))
                if not take:
                    return False
                self._keep(pending[:take])
                del pending[:take]
                self._chunk_left -= take
                if not self._chunk_left:
                    self._chunk_left = -3
