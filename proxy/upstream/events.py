"""Server-sent events off an upstream's reply as its bytes arrive (text/event-stream).

A host that streams (OpenAI's partial images) sends events of megabytes each; each is cut out
of the bytes once, as soon as its blank line arrives, and none may grow past a cap: a host
that never ends an event cannot fill memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from proxy.upstream.http1 import ReplyTooLarge


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One event: its `event:` name ("message" when it has none) and its data lines joined."""

    name: str
    data: bytes

    def encoded(self) -> bytes:
        """The event as it goes on the wire again."""
        lines = b"".join(b"data: " + line + b"\n" for line in self.data.split(b"\n"))
        return b"event: " + self.name.encode() + b"\n" + lines + b"\n"


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


class Decoder:
    """Bytes in, whole events out; an event over `max_bytes` raises ReplyTooLarge. The line
    ending is the stream's first one (hosts do not mix them), so each byte is searched once."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self._pending = bytearray()
        self._searched = 0  # bytes of _pending already known to hold no event end
        self._end = b""  # the blank line, once the first line ending is known

    def feed(self, chunk: bytes) -> Iterator[ServerEvent]:
        self._pending += chunk
        if not self._end:
            self._end = _blank_line(self._pending)
        while self._end and (end := self._pending.find(self._end, self._searched)) >= 0:
            block = bytes(self._pending[:end])
            del self._pending[:end + len(self._end)]
            self._searched = 0
            event = parse(block, self._end == b"\n\n")
            if event is not None:
                yield event
        if self.max_bytes is not None and len(self._pending) > self.max_bytes:
            self._pending.clear()
            raise ReplyTooLarge(f"an upstream event larger than {self.max_bytes} bytes")
        # An end may straddle two chunks: look again from a few bytes back.
        self._searched = max(0, len(self._pending) - 3)


def _blank_line(pending: bytearray) -> bytes:
    """The blank line that ends an event, by the first line ending; b"" before there is one."""
    lf = pending.find(b"\n")
    cr = pending.find(b"\r", 0, lf if lf >= 0 else len(pending))
    if cr < 0:
        return b"\n\n" if lf >= 0 else b""
    if cr + 1 == len(pending):
        return b""  # a \r last: \r\n or a lone \r, not known yet
    return b"\r\n\r\n" if pending[cr + 1] == ord("\n") else b"\r\r"


def parse(block: bytes, plain: bool = False) -> ServerEvent | None:
    """One event's lines (`plain`: they end in \\n alone, no need to look for \\r); None for
    a block of comments (keep-alives) or without data."""
    name = "message"
    data: list[bytes] = []
    lines = block if plain else block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for line in lines.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value)
    return ServerEvent(name, b"\n".join(data)) if data else None


def decode_all(body: bytes | bytearray) -> list[ServerEvent]:
    """Every whole event of a reply read to its end."""
    return list(Decoder(None).feed(b"".join((body, b"\n\n"))))
