"""An HTTP/1.1 response's head and how its body is framed (RFC 9112), for the lean connection
(http1.py): parsing only, no I/O. Failures raise httpx's RemoteProtocolError, as httpcore's
parser would."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import httpx

MAX_HEAD = 64 * 1024  # status line and headers
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class Framing(enum.Enum):
    HEAD = 0  # reading the status line and headers
    LENGTH = 1  # a Content-Length body, into one buffer
    CHUNKED = 2
    CLOSE = 3  # the body ends when the server closes
    COUNTED = 4  # a Content-Length body handed to a sink piece by piece
    DONE = 5


@dataclass(slots=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool


def parse_head(raw: bytes) -> Head:
    """The status line and headers of a response head (without its final blank line)."""
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError("malformed response status line")
    headers = []
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise httpx.RemoteProtocolError("malformed response header")
        value = value.strip(b" \t")
        headers.append((name, value))
        if name.lower() == b"connection" and b"close" in value.lower():
            keep_alive = False
    return Head(int(code), headers, keep_alive)


def body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[Framing, int]:
    """How the body is delimited (RFC 9112 6.3): chunked, a length, or the connection's end.
    Both a Transfer-Encoding and a Content-Length is refused, as h11 does (request smuggling)."""
    lengths: set[bytes] = set()
    codings = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            codings.append(value.lower().strip())
        elif lowered == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
    if codings and lengths:
        raise httpx.RemoteProtocolError("both Transfer-Encoding and Content-Length")
    if codings:
        return (Framing.CHUNKED if codings[-1].endswith(b"chunked") else Framing.CLOSE), 0
    if not lengths:
        return Framing.CLOSE, 0
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise httpx.RemoteProtocolError("malformed Content-Length")
    return Framing.LENGTH, int(lengths.pop())


def chunk_size(line: bytes) -> int:
    text = line.partition(b";")[0].strip(b" \t")
    if not _HEX.fullmatch(text):
        raise httpx.RemoteProtocolError("malformed chunk size")
    return int(text, 16)


def short_line(pending: bytearray) -> bool:
    if len(pending) > MAX_HEAD:
        raise httpx.RemoteProtocolError("chunk framing line too long")
    return False
