"""A hostile OpenAI-shaped upstream: replies that are not images, never end, or never stop.

One asyncio server on loopback serves two providers by path: under /healthy it answers every
generation with a real PNG of the asked size; under /hostile the prompt names the misbehaviour
("drip", "gzip_bomb", ...; see BEHAVIOURS). The hardening tests and `switchyard bench hostile`
point a two-route catalog at it: the hostile route first, the healthy one behind it.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from proxy import imaging
from proxy.bench.loopback import LoopbackServer, read_request

MB = 1024 * 1024
Behaviour = Callable[["HostileUpstream", asyncio.StreamWriter, int], Awaitable[None]]


def json_reply(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def images_body(*b64: str) -> bytes:
    return orjson.dumps({"created": 0, "data": [{"b64_json": b} for b in b64]})


def png_b64(width: int = 64, height: int = 64, seed: str = "h") -> str:
    return base64.b64encode(imaging.encode(width, height, "png", seed)).decode("ascii")


def huge_png(width: int = 12000, height: int = 12000) -> bytes:
    """A PNG whose header claims `width`x`height` (576 MB of pixels decoded) around a tiny,
    valid zlib stream: only a decoder would find out."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def corrupt_png() -> bytes:
    """A PNG with a sound header and end whose pixel data is garbage: it fails only when
    decoded (a conversion)."""
    good = imaging.encode(64, 64, "png", "c")
    start = good.index(b"IDAT") + 4
    return good[:start] + bytes(range(256)) * 4 + good[-12:]


def gzip_bomb(decoded_bytes: int) -> bytes:
    """`decoded_bytes` of zeros, gzipped (about a thousandth of the size)."""
    out = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    parts = [out.compress(b"\0" * MB) for _ in range(decoded_bytes // MB)]
    return b"".join(parts) + out.flush()


async def _drip(upstream: HostileUpstream, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: 100000\r\n\r\n{")
    for _ in range(100_000):
        await asyncio.sleep(upstream.drip_s)
        writer.write(b" ")
        await writer.drain()


async def _gzip_bomb(upstream: HostileUpstream, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(json_reply(upstream.bomb, b"content-encoding: gzip\r\n"))
    await writer.drain()


async def _endless(writer: asyncio.StreamWriter, head: bytes, piece: bytes, total: int) -> None:
    writer.write(head)
    for _ in range(total // len(piece)):
        writer.write(piece)
        await writer.drain()


async def _huge_length(upstream: HostileUpstream, writer: asyncio.StreamWriter, n: int) -> None:
    await _endless(writer, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                           b"content-length: %d\r\n\r\n" % upstream.huge_bytes,
                   b"0" * MB, upstream.huge_bytes)


async def _huge_chunked(upstream: HostileUpstream, writer: asyncio.StreamWriter, n: int) -> None:
    await _endless(writer, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                           b"transfer-encoding: chunked\r\n\r\n",
                   b"%x\r\n%s\r\n" % (MB, b"0" * MB), upstream.huge_bytes)


def _answer(make: Callable[[int], bytes]) -> Behaviour:
    async def behaviour(upstream: HostileUpstream, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(json_reply(make(n)))
        await writer.drain()
    return behaviour


def _bad_base64(n: int) -> bytes:
    good = png_b64()
    middle = len(good) // 2
    return images_body(good[:middle] + "*!*" + good[middle + 3:] + "=")


BEHAVIOURS: dict[str, Behaviour] = {
    "drip": _drip,
    "gzip_bomb": _gzip_bomb,
    "huge_length": _huge_length,
    "huge_chunked": _huge_chunked,
    "not_image": _answer(lambda n: images_body(
        base64.b64encode(b"this is not an image, " * 500).decode())),
    "bad_base64": _answer(_bad_base64),
    "too_many": _answer(lambda n: images_body(*[png_b64(seed=str(i)) for i in range(n + 9)])),
    "huge_pixels": _answer(lambda n: images_body(base64.b64encode(huge_png()).decode())),
    "truncated": _answer(lambda n: images_body(png_b64()[:-200])),
    "corrupt": _answer(lambda n: images_body(base64.b64encode(corrupt_png()).decode())),
}


@dataclass
class HostileUpstream(LoopbackServer):
    """The server; `requests` counts what each path prefix got."""

    drip_s: float = 1.0
    huge_bytes: int = 200 * MB
    bomb_bytes: int = 1024 * MB
    port: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    bomb: bytes = b""
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self.bomb = await asyncio.to_thread(gzip_bomb, self.bomb_bytes)
        await super().start()

    def base_url(self, side: str) -> str:
        return f"http://127.0.0.1:{self.port}/{side}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, raw = await read_request(reader)
                body = orjson.loads(raw or b"{}")
                side = head.split(b" ")[1].split(b"/")[1].decode()
                self.requests[side] = self.requests.get(side, 0) + 1
                await self._answer(side, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, side: str, body: dict[str, object],
                      writer: asyncio.StreamWriter) -> None:
        n = int(str(body.get("n", 1)))
        behaviour = BEHAVIOURS.get(str(body.get("prompt", ""))) if side == "hostile" else None
        if behaviour is not None:
            await behaviour(self, writer, n)
            return
        width, height = (int(v) for v in str(body.get("size", "64x64")).split("x"))
        writer.write(json_reply(images_body(*[png_b64(width, height, str(i))
                                              for i in range(n)])))
        await writer.drain()


def catalog_files(upstream: HostileUpstream, model: str = "hardened",
                  key_env: str = "HOSTILE_TEST_KEY") -> dict[str, str]:
    """routes/ for a model whose cheaper route is the hostile side and the dearer the healthy
    one (timeouts short enough for a test), as file name -> text."""
    providers = "".join(
        f'[{side}]\nprotocol = "openai_images"\nbase_url = "{upstream.base_url(side)}"\n'
        f'key_env = "{key_env}"\ntimeout_s = 3\nmax_in_flight = 8\n\n'
        for side in ("hostile", "healthy"))
    routes = "".join(
        f'[[routes]]\nprovider = "{side}"\nupstream_model = "m"\n'
        f'price.per_image = {{ "1K" = {price} }}\noptions.sizes = ["1024x1024"]\n\n'
        for side, price in (("hostile", 0.01), ("healthy", 0.02)))
    model_file = (f'name = "{model}"\nowned_by = "tests"\ndefault_strategy = "cheapest"\n\n'
                  '[capabilities]\naspect_ratios = ["1:1"]\nmax_n = 4\n'
                  'output_formats = ["png", "jpeg", "webp"]\n\n' + routes)
    return {"providers.toml": providers, f"models/{model}.toml": model_file}
