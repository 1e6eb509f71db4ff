"""A JSON response whose big strings (an image's base64) go out in slices.

orjson.dumps of an ImagesResponse reserves several times the whole document while it works,
and the whole body then waits in the server's send buffer for a slow client. Here the JSON
around the big strings is serialized once with placeholders, and each big string is escaped
by orjson so any content stays valid JSON. Strings that escape to themselves (base64 always
does) are escaped in one pass each, up to WHOLE_MAX characters per response. Where the server
keeps a send by reference until it is written (uvloop with httptools: the ASGI scope extension
WHOLE_SENDS, set by proxy/connections.py), each such copy goes in one send: it exists whole
anyway, and sent in slices it cost a pause and a resume of the response per slice (a 1.4 MB
image used 12% more CPU and waited 0.4 ms longer); elsewhere (asyncio's loop, h11) a send is
copied while it waits, so the copy goes in SLICE pieces as the client drains them. The rest
are escaped slice by slice the same way, after a first pass that counts their escaped length,
so a response of many big images never holds more than WHOLE_MAX characters twice.
Content-Length is exact either way.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SLICE = 256 * 1024  # characters escaped and sent at a time
# Strings shorter than this are serialized in place: slicing pays off only for images.
MIN_STREAMED = 64 * 1024
# Characters per response escaped in one pass and sent as slices of that copy (half the CPU of
# escaping slice by slice); past it, strings never exist as a second full copy.
WHOLE_MAX = 2_000_000
# The ASGI scope extension of a server that keeps each send by reference until it is written.
WHOLE_SENDS = "switchyard.whole_sends"


class Pieces:
    """A JSON document as raw JSON bytes interleaved with the contents of big strings."""

    def __init__(self, parts: list[bytes | str]) -> None:
        self.parts: list[bytes | memoryview | str] = []
        self.length = 0
        # Strings that escape to themselves (base64 always does) go out as plain ASCII: one
        # escaping pass to count them, where counting and then escaping again took two.
        self.plain: list[bool] = []
        copied = 0  # characters held twice: as given and as their escaped copy
        for given in parts:
            part: bytes | memoryview | str = given
            if isinstance(given, str) and copied + len(given) <= WHOLE_MAX and given.isascii():
                whole = memoryview(orjson.dumps(given))[1:-1]
                if len(whole) == len(given):  # escaped to itself: sent as that copy, sliced
                    part = whole
                    copied += len(given)
            size = len(part) if not isinstance(part, str) else escaped_length(part)
            self.parts.append(part)
            self.length += size
            self.plain.append(isinstance(part, str) and part.isascii() and size == len(part))

    def chunks(self, whole: bool = False) -> Iterator[bytes | memoryview]:
        """The document a few hundred KB at a time; with `whole`, each escaped copy in one
        piece."""
        for part, is_plain in zip(self.parts, self.plain, strict=True):
            if isinstance(part, bytes) or (whole and isinstance(part, memoryview)):
                yield part
            elif isinstance(part, memoryview):
                for start in range(0, len(part), SLICE):
                    yield part[start:start + SLICE]
            elif is_plain:
                for start in range(0, len(part), SLICE):
                    yield part[start:start + SLICE].encode("ascii")
            else:
                for start in range(0, len(part), SLICE):
                    yield orjson.dumps(part[start:start + SLICE])[1:-1]

    def join(self) -> bytes:
        return b"".join(self.chunks())


def escaped_length(text: str) -> int:
    """Bytes of `text` inside a JSON string as orjson writes it (escapes, UTF-8)."""
    return sum(len(orjson.dumps(text[start:start + SLICE])) - 2
               for start in range(0, len(text), SLICE))


def split(document: Any) -> Pieces | None:
    """`document` with its strings of MIN_STREAMED characters or more left out of the one
    orjson.dumps, to be sent in slices; None when it has none (or, never in practice, a
    placeholder cannot be found again)."""
    token = secrets.token_hex(8)
    big: list[str] = []

    def mark(text: str) -> str:
        big.append(text)
        return f"@@switchyard-{token}-{len(big)}@@"

    skeleton = _replaced(document, mark)
    if not big:
        return None
    encoded = orjson.dumps(skeleton)
    parts: list[bytes | str] = []
    for number, text in enumerate(big, 1):
        before, found, encoded = encoded.partition(f"@@switchyard-{token}-{number}@@".encode())
        if not found:
            return None
        parts += (before, text)
    parts.append(encoded)
    return Pieces(parts)


def _replaced(node: Any, mark: Callable[[str], str]) -> Any:
    """A copy of the JSON tree with big strings swapped for marks, in document order."""
    if isinstance(node, str):
        return mark(node) if len(node) >= MIN_STREAMED else node
    if isinstance(node, dict):
        return {key: _replaced(value, mark) for key, value in node.items()}
    if isinstance(node, list):
        return [_replaced(value, mark) for value in node]
    return node


class PiecesResponse(Response):
    """A JSON response sent as Pieces; `body` joins them, for callers that keep a copy
    (an idempotent replay, a job's stored result)."""

    def __init__(self, pieces: Pieces, status_code: int = 200,
                 headers: Mapping[str, str] | None = None,
                 background: BackgroundTask | None = None) -> None:
        self.pieces = pieces
        self.status_code = status_code
        self.background = background
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in (headers or {}).items()]
        self.raw_headers += ((b"content-length", str(pieces.length).encode()),
                             (b"content-type", b"application/json"))

    @property
    def body(self) -> bytes:
        return self.pieces.join()

    @body.setter
    def body(self, value: bytes) -> None:
        raise AttributeError("a PiecesResponse's body is its pieces")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        whole = WHOLE_SENDS in scope.get("extensions", {})
        for chunk in self.pieces.chunks(whole):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()
