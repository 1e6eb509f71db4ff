"""Real PNG and JPEG images of an exact base64 length, for the overhead benchmark's fake host.

A host sends a picture a decoder opens, so sniffing and verification are measured on what
they meet in production. Each image is a square of noise rows over a flat rest, made by Pillow:
noise does not compress, so the rows of noise set the size; a comment (PNG tEXt chunk before
IEND, JPEG COM segments before the scan, where cameras put metadata) makes it exact. The frame
header stays in the first few hundred bytes, as a plain encoder writes it.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

from PIL import Image

FORMATS = ("png", "jpeg")
_SIDES = (64, 1024, 2048, 4096)  # the smallest whose noise can carry the size is used
_JPEG_QUALITY = 95
_COM_MAX = 65533  # data bytes in one JPEG segment
_MIN_PAD = 12 + 64  # a PNG chunk's framing, and room for JPEG segment headers


def image_base64(chars: int, fmt: str, seed: int = 0) -> str:
    """`chars` characters of base64 (a multiple of 4) of a real `fmt` image that decodes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if chars % 4:
        raise ValueError(f"base64 length must be a multiple of 4, got {chars}")
    target = chars // 4 * 3
    data = _sized(target, fmt, seed)
    return base64.b64encode(data).decode("ascii")


def _sized(target: int, fmt: str, seed: int) -> bytes:
    side = next((s for s in _SIDES if _encoded(s, s, fmt, seed) > target), _SIDES[-1])
    low, high = 0, side  # rows of noise: the encoded size grows with them
    while low < high:
        mid = (low + high + 1) // 2
        if _encoded(side, mid, fmt, seed) + _MIN_PAD <= target:
            low = mid
        else:
            high = mid - 1
    data = _encode(side, low, fmt, seed)
    if len(data) + _MIN_PAD > target:
        raise ValueError(f"no {fmt} image fits in {target} bytes")
    return _padded(data, target, fmt)


def _encoded(side: int, rows: int, fmt: str, seed: int) -> int:
    return len(_encode(side, rows, fmt, seed))


def _encode(side: int, rows: int, fmt: str, seed: int) -> bytes:
    noise = random.Random(seed).randbytes(side * rows * 3)  # the same rows each try
    flat = bytes((40, 90, 160)) * (side * (side - rows))
    picture = Image.frombytes("RGB", (side, side), noise + flat)
    out = io.BytesIO()
    if fmt == "png":
        picture.save(out, "PNG", compress_level=1)
    else:
        picture.save(out, "JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()


def _padded(data: bytes, target: int, fmt: str) -> bytes:
    gap = target - len(data)
    if fmt == "png":
        end = data.rindex(b"IEND") - 4
        text = b"Comment\x00" + b"x" * (gap - 12 - 8)
        chunk = struct.pack(">I", len(text)) + b"tEXt" + text + \
            struct.pack(">I", zlib.crc32(b"tEXt" + text))
        return data[:end] + chunk + data[end:]
    scan = data.index(b"\xff\xda")  # the first (only) scan: comments go before it
    segments, left = [], gap
    while left:
        size = min(left, _COM_MAX + 4)
        if left - size and left - size < 4:  # the last segment needs its 4-byte framing
            size -= 4
        segments.append(b"\xff\xfe" + struct.pack(">H", size - 2) + b"c" * (size - 4))
        left -= size
    return data[:scan] + b"".join(segments) + data[scan:]
