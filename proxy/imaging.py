"""Cheap, real PNG/JPEG/WebP images for the simulated upstream, plus header sniffing."""

import base64
import binascii
import hashlib
import itertools
import struct
import zlib
from collections.abc import Iterator

RGB = tuple[int, int, int]

MAX_SIDE = 8192
FORMATS = ("png", "jpeg", "webp")

_PNG_LEVEL = 1  # the rows are runs of one colour: level 1 already shrinks them ~1000x
_CHUNK_BYTES = 1 << 20  # feed zlib about 1 MiB at a time so memory stays flat

# Annex K tables (natural order for the quantisers, BITS/HUFFVAL for the Huffman codes).
_Q_LUMA = bytes([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])
_Q_CHROMA = bytes([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4
                  + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 6 + [99] * 32)
_DC_BITS = {
    0: bytes.fromhex("00010501010101010100000000000000"),
    1: bytes.fromhex("00030101010101010101010000000000"),
}
_DC_VALS = bytes(range(12))
_AC_BITS = {
    0: bytes.fromhex("0002010303020403050504040000017d"),
    1: bytes.fromhex("00020102040403040705040400010277"),
}
_AC_VALS = {
    0: bytes.fromhex(
        "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a16"
        "1718191a25262728292a3435363738393a434445464748494a535455565758595a63646566676869"
        "6a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6"
        "b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8"
        "f9fa"
    ),
    1: bytes.fromhex(
        "000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a162434"
        "e125f11718191a262728292a35363738393a434445464748494a535455565758595a636465666768"
        "696a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4"
        "b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8"
        "f9fa"
    ),
}


def palette(seed: str) -> tuple[RGB, RGB]:
    """Two RGB colours from sha256(seed): the same prompt always gives the same picture."""
    d = hashlib.sha256(seed.encode("utf-8")).digest()
    return (d[0], d[1], d[2]), (d[3], d[4], d[5])


def encode(width: int, height: int, fmt: str, seed: str) -> bytes:
    """Encoded image bytes; fmt is 'png', 'jpeg' or 'webp'.

    Raises ValueError on an unknown fmt or a side outside 1..MAX_SIDE, so a bad
    request fails loudly instead of producing an undecodable file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {FORMATS}")
    for name, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_SIDE:
            raise ValueError(f"{name} must be an integer in 1..{MAX_SIDE}, got {side!r}")
    a, b = palette(seed)
    if fmt == "png":
        return _png(width, height, a, b)
    if fmt == "jpeg":
        return _jpeg(width, height, a, b)
    return _webp(width, height, a)


def _gradient(a: RGB, b: RGB, steps: int) -> Iterator[RGB]:
    """Colour of each of `steps` bands, A first and B last (A only when steps == 1)."""
    span = max(steps - 1, 1)
    for i in range(steps):
        yield (
            (a[0] * (span - i) + b[0] * i + span // 2) // span,
            (a[1] * (span - i) + b[1] * i + span // 2) // span,
            (a[2] * (span - i) + b[2] * i + span // 2) // span,
        )


# --- PNG -------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """One length-prefixed, CRC-suffixed PNG chunk."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, a: RGB, b: RGB) -> bytes:
    """8-bit RGB PNG, vertical gradient; each run of equal rows is built once and fed to zlib."""
    comp = zlib.compressobj(_PNG_LEVEL)
    parts: list[bytes] = []
    for colour, run in itertools.groupby(_gradient(a, b, height)):
        row = b"\x00" + bytes(colour) * width  # filter type 0 (None)
        count = sum(1 for _ in run)
        per_chunk = max(1, _CHUNK_BYTES // len(row))
        block = row * min(count, per_chunk)
        while count >= per_chunk:
            parts.append(comp.compress(block))
            count -= per_chunk
        if count:
            parts.append(comp.compress(row * count))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", ihdr),
        _png_chunk(b"IDAT", b"".join(parts)),
        _png_chunk(b"IEND", b""),
    ))


# --- JPEG ------------------------------------------------------------------------------


def _zigzag(natural: bytes) -> bytes:
    """Reorder an 8x8 table from row-major into the zig-zag order DQT stores."""

    def order(i: int) -> tuple[int, int]:
        row, col = divmod(i, 8)  # odd anti-diagonals run downwards, even ones upwards
        return row + col, row if (row + col) % 2 else col

    return bytes(natural[i] for i in sorted(range(64), key=order))


def _huffman_codes(bits: bytes, vals: bytes) -> dict[int, str]:
    """Canonical Huffman code (as a '0'/'1' string) of each symbol, per Annex C."""
    codes: dict[int, str] = {}
    code, k = 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[vals[k]] = format(code, f"0{length}b")
            code, k = code + 1, k + 1
        code <<= 1
    return codes


_DC_CODES = {t: _huffman_codes(_DC_BITS[t], _DC_VALS) for t in (0, 1)}
_EOB = {t: _huffman_codes(_AC_BITS[t], _AC_VALS[t])[0x00] for t in (0, 1)}


def _dc_bits(diff: int, table: int) -> str:
    """DC difference as category code + magnitude bits, followed by EOB (all AC are zero)."""
    size = abs(diff).bit_length()
    extra = format(diff if diff >= 0 else diff + (1 << size) - 1, f"0{size}b") if size else ""
    return _DC_CODES[table][size] + extra + _EOB[table]


def _dc_values(c: RGB) -> tuple[int, int, int]:
    """Quantised DC coefficients of a flat 8x8 block of colour c in Y, Cb, Cr (JFIF)."""
    r, g, b = c
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    # A flat block's DCT DC term is 8 * (level-shifted sample value).
    return (round(8 * (y - 128) / _Q_LUMA[0]), round(8 * (cb - 128) / _Q_CHROMA[0]),
            round(8 * (cr - 128) / _Q_CHROMA[0]))


def _jpeg_scan(mcus_x: int, mcus_y: int, a: RGB, b: RGB) -> bytes:
    """Entropy-coded 4:4:4 scan; one colour per MCU row, so every row after its first MCU
    is the same all-zero-difference bit string, and whole rows are cached by their diffs."""
    same = (_dc_bits(0, 0) + _dc_bits(0, 1) * 2) * (mcus_x - 1)
    cache: dict[tuple[int, int, int], str] = {}
    rows: list[str] = []
    prev = (0, 0, 0)
    for colour in _gradient(a, b, mcus_y):
        dc = _dc_values(colour)
        key = (dc[0] - prev[0], dc[1] - prev[1], dc[2] - prev[2])
        if key not in cache:
            cache[key] = _dc_bits(key[0], 0) + _dc_bits(key[1], 1) + _dc_bits(key[2], 1) + same
        rows.append(cache[key])
        prev = dc
    bits = "".join(rows)
    bits += "1" * (-len(bits) % 8)  # pad the last byte with 1-bits
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return data.replace(b"\xff", b"\xff\x00")


def _segment(marker: int, body: bytes) -> bytes:
    """A JPEG marker segment with its big-endian length."""
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _jpeg(width: int, height: int, a: RGB, b: RGB) -> bytes:
    """Baseline JFIF, YCbCr 4:4:4 (no chroma bleed between bands), Annex K tables,
    DC-only blocks; sizes padded to 8."""
    dht = b"".join(
        bytes([cls << 4 | t]) + bits + vals
        for t in (0, 1)
        for cls, bits, vals in ((0, _DC_BITS[t], _DC_VALS), (1, _AC_BITS[t], _AC_VALS[t]))
    )
    sof = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1])
    sos = bytes([3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0])
    return b"".join((
        b"\xff\xd8",
        _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
        _segment(0xDB, b"\x00" + _zigzag(_Q_LUMA) + b"\x01" + _zigzag(_Q_CHROMA)),
        _segment(0xC0, sof),
        _segment(0xC4, dht),
        _segment(0xDA, sos),
        _jpeg_scan(-(-width // 8), -(-height // 8), a, b),
        b"\xff\xd9",
    ))


# --- WebP (lossless VP8L) ----------------------------------------------------------------


def _webp(width: int, height: int, c: RGB) -> bytes:
    """Solid-colour VP8L: five one-symbol prefix codes, so every pixel costs zero bits."""
    fields = [(0x2F, 8), (width - 1, 14), (height - 1, 14), (0, 1), (0, 3)]  # no alpha, v0
    fields += [(0, 1), (0, 1), (0, 1)]  # no transform, no colour cache, no meta prefix codes
    for symbol in (c[1], c[0], c[2], 255, 0):  # green, red, blue, alpha, distance
        fields += [(1, 1), (0, 1), (1, 1), (symbol, 8)]  # simple, 1 symbol, 8-bit symbol
    acc, pos = 0, 0
    for value, nbits in fields:
        acc |= value << pos  # VP8L packs fields LSB first
        pos += nbits
    data = acc.to_bytes((pos + 7) // 8, "little")
    chunk = b"VP8L" + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# --- Reading headers ---------------------------------------------------------------------


def sniff(data: bytes | bytearray) -> str | None:
    """'png', 'jpeg', 'webp' or 'gif' from the magic bytes, else None (rejects non-images)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def dimensions(data: bytes | bytearray) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, WebP or GIF header without decoding; None if
    unreadable."""
    kind = sniff(data)
    if kind == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return (w, h) if w and h else None
    if kind == "jpeg":
        return _jpeg_size(data)
    if kind == "webp":
        return _webp_size(data)
    if kind == "gif" and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return (w, h) if w and h else None
    return None


_SOF = {0xC0 + n for n in range(16)} - {0xC4, 0xC8, 0xCC}
_STANDALONE = {0x01, 0xD8} | {0xD0 + n for n in range(8)}


def _jpeg_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """Walk the marker segments up to the first SOFn and read its frame size."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF and i + 9 <= len(data):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (w, h) if w and h else None
        i += 2 + length
    return None


def _webp_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """Canvas size from the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
    kind, body = data[12:16], data[20:30]
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(body) >= 10:
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    return None


# Prefixes of base64 to try, shortest first: PNG and WebP headers sit in the first 256
# characters; a JPEG's size can follow tens of kilobytes of EXIF.
_B64_PREFIXES = (256, 4096, 96 * 1024)


def b64_header(b64: str) -> tuple[str | None, tuple[int, int] | None]:
    """Format and pixel size from base64 image data, decoding as short a prefix as will do:
    an image passes through as its base64 text and is never decoded whole for this."""
    kind: str | None = None
    for chars in _B64_PREFIXES:
        prefix = b64[:chars]
        try:
            data = base64.b64decode(prefix[: len(prefix) // 4 * 4])
        except (binascii.Error, ValueError):
            return None, None
        kind, found = sniff(data), dimensions(data)
        if found is not None or len(b64) <= chars:
            return kind, found
    return kind, None
