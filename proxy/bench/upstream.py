"""The overhead benchmark's fake upstream: OpenAI's POST /v1/images/generations on a raw asyncio
socket, answering a pre-built `{"created", "data": [{"b64_json"}]}` body after an optional delay.

It runs in its own process (`python -m proxy.bench.upstream --sizes 2000,1400000
[--formats png,jpeg]`, with `--cert C --key K` on https), prints its port on the first line of
stdout, and serves until killed. The request picks the body: a prompt holding `payload=N` gets
the body whose base64 is N characters long, of the image format its `output_format` names (png
unless it says jpeg). Every body is built once at startup, a real image that decoders open
(proxy.bench.real_images), so the proxy's sniffing and checks meet what hosts send. Kept
minimal on purpose: the upstream must cost far less than the proxy it measures.
png_base64 is the cheaper stand-in other benchmarks use (well-formed chunks, random pixels).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import re
import ssl
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence

from proxy.bench import real_images

PATH = b"/v1/images/generations"
SIDE = 1024
_PAYLOAD = re.compile(rb"payload=(\d+)")
_FORMAT = re.compile(rb'"output_format"\s*:\s*"(\w+)"')
_HEAD_END = b"\r\n\r\n"


def png_base64(chars: int, seed: int = 0) -> str:
    """`chars` characters of base64 (a multiple of 4, at least 76) that decode to a PNG whose
    chunks are well formed: signature, a 1024x1024 IHDR, random bytes in an IDAT, IEND. What a
    proxy checks without decoding pixels (format, size, an end) holds; a decoder would fail."""
    if chars % 4 or chars < 76:
        raise ValueError(f"base64 length must be a multiple of 4 and at least 76, got {chars}")
    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    end = _chunk(b"IEND", b"")
    filler = chars // 4 * 3 - len(head) - len(end) - 12
    raw = head + _chunk(b"IDAT", random.Random(seed).randbytes(filler)) + end
    return base64.b64encode(raw).decode("ascii")


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def response_body(chars: int, fmt: str = "png") -> bytes:
    """The JSON body an OpenAI-shaped host answers with: a real `fmt` image in `chars`
    characters of base64."""
    image = real_images.image_base64(chars, fmt).encode()
    return b'{"created":1700000000,"data":[{"b64_json":"' + image + b'"}]}'


def _http(status: int, body: bytes) -> tuple[bytes, bytes]:
    reason = {200: "OK", 404: "Not Found"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head, body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: read a request (head and Content-Length body), answer it."""

    def __init__(self, bodies: Mapping[tuple[int, bytes], bytes], delay_s: float) -> None:
        self.bodies = bodies
        self.delay_s = delay_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(_HEAD_END)) >= 0:
            head = bytes(self.buffer[:end])
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            size = end + 4 + (int(found.group(1)) if found else 0)
            if len(self.buffer) < size:
                return
            body = bytes(self.buffer[end + 4:size])
            del self.buffer[:size]
            self._answer(head.split(b" ", 2)[1] if b" " in head else b"", body)

    def _answer(self, path: bytes, body: bytes) -> None:
        wanted, fmt = _PAYLOAD.search(body), _FORMAT.search(body)
        key = (int(wanted.group(1)) if wanted else 0, fmt.group(1) if fmt else b"png")
        reply = self.bodies.get(key)
        if path != PATH or reply is None:
            reply_parts = _http(404, b'{"error":{"code":"not_found","message":"no such payload"}}')
        else:
            reply_parts = _http(200, reply)
        if self.delay_s > 0:
            asyncio.get_running_loop().call_later(self.delay_s, self._write, reply_parts)
        else:
            self._write(reply_parts)

    def _write(self, parts: tuple[bytes, bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(parts[0])
            self.transport.write(parts[1])


async def serve(sizes: Sequence[int], delay_s: float, port: int = 0,
                tls: ssl.SSLContext | None = None, formats: Sequence[str] = ("png",)) -> None:
    """Build every body once (each size in each format), listen on 127.0.0.1 (over TLS with
    `tls`), print the port, serve forever."""
    bodies = {(chars, fmt.encode()): response_body(chars, fmt)
              for chars in sizes for fmt in formats}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(bodies, delay_s), "127.0.0.1", port,
                                      backlog=1024, ssl=tls)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.bench.upstream")
    parser.add_argument("--sizes", required=True,
                        help="comma-separated base64 lengths of the bodies to serve")
    parser.add_argument("--formats", default="png",
                        help="comma-separated image formats of each size (png, jpeg)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", help="PEM certificate: serve https (with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    try:
        asyncio.run(serve(sizes, args.delay, args.port, tls, args.formats.split(",")))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
