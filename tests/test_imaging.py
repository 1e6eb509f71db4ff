"""proxy.imaging: our encoders' output must decode, with the right size and colours, in Pillow."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest

Image = pytest.importorskip("PIL.Image")

from proxy import imaging  # noqa: E402
from proxy.imaging import dimensions, encode, palette, sniff  # noqa: E402

FORMATS = ("png", "jpeg", "webp")
SIZES = [(1, 1), (7, 13), (512, 512), (1024, 768), (1536, 1024), (2048, 2048)]
PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
SEED = "a lighthouse at dusk, oil painting"
JPEG_TOLERANCE = 6


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _close(got: tuple[int, ...], want: tuple[int, int, int], tol: int) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got[:3], want, strict=True))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_encode_decodes_with_right_size_and_colour(fmt: str, width: int, height: int) -> None:
    data = encode(width, height, fmt, SEED)
    im = _decode(data)
    assert im.format == PIL_NAMES[fmt]
    assert im.size == (width, height)
    rgb = im.convert("RGB")
    a, b = palette(SEED)
    tol = JPEG_TOLERANCE if fmt == "jpeg" else 0
    near = min(3, width - 1), min(3, height - 1)  # PNG changes colour every row, JPEG per 8
    for x, y in {(0, 0), (near[0], 0), near if fmt != "png" else (0, 0)}:
        assert _close(rgb.getpixel((x, y)), a, tol), (x, y, rgb.getpixel((x, y)), a)
    if fmt == "png" and height > 1:
        for x in {0, width // 2, width - 1}:
            assert rgb.getpixel((x, height - 1)) == b
    if fmt == "jpeg" and height > 8:  # more than one 8-px band, so the last band is colour B
        assert _close(rgb.getpixel((width - 1, height - 1)), b, JPEG_TOLERANCE)
    if fmt == "webp":  # solid colour: the far corner too
        assert rgb.getpixel((width - 1, height - 1)) == a
    assert dimensions(data) == im.size
    assert sniff(data) == fmt


def test_png_gradient_runs_top_to_bottom() -> None:
    rgb = _decode(encode(4, 256, "png", "gradient")).convert("RGB")
    column = [rgb.getpixel((0, y)) for y in range(256)]
    a, b = palette("gradient")
    for channel in range(3):
        values = [px[channel] for px in column]
        assert values == sorted(values, reverse=a[channel] > b[channel])


def test_jpeg_odd_sizes_decode() -> None:
    # Odd sizes pad the last MCU; long and tall images exercise the cached row bit strings.
    for width, height in [(9, 17), (4095, 31), (15, 4000)]:
        for seed in ("", "white", "black"):
            im = _decode(encode(width, height, "jpeg", seed))
            assert im.size == (width, height)


def test_jpeg_byte_stuffing() -> None:
    # A near-black to near-white jump is the one case where eight 1-bits in the scan land on a
    # byte boundary (a luma DC diff of +127 followed by EOB, at 4 MCUs wide), so 0xFF must be
    # stuffed as 0xFF 0x00 or the decoder would read a marker.
    from proxy.imaging import _jpeg

    a, b = (0, 0, 3), (254, 254, 254)
    data = _jpeg(32, 16, a, b)
    scan = data[data.index(b"\xff\xda") + 14 : -2]
    assert b"\xff\x00" in scan
    assert scan.count(b"\xff") == scan.count(b"\xff\x00")
    rgb = _decode(data).convert("RGB")
    assert _close(rgb.getpixel((0, 0)), a, JPEG_TOLERANCE)
    assert _close(rgb.getpixel((31, 15)), b, JPEG_TOLERANCE)


def test_png_chunks_have_correct_crcs() -> None:
    # Pillow skips the IDAT CRC check, so walk the chunks and verify every CRC ourselves.
    data = encode(300, 200, "png", SEED)
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


def test_palette_is_deterministic_and_seed_dependent() -> None:
    assert palette("x") == palette("x")
    assert palette("x") != palette("y")
    for colour in palette("anything"):
        assert len(colour) == 3
        assert all(0 <= c <= 255 for c in colour)


def test_encode_is_deterministic() -> None:
    for fmt in FORMATS:
        assert encode(64, 48, fmt, SEED) == encode(64, 48, fmt, SEED)


def test_sniff() -> None:
    for fmt in FORMATS:
        assert sniff(encode(8, 8, fmt, SEED)) == fmt
    assert sniff(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;") == "gif"
    assert sniff(b"GIF87a\x01\x00\x01\x00") == "gif"
    assert sniff(b"hello, this is plain text") is None
    assert sniff(b"") is None
    assert sniff(b"RIFF\x00\x00\x00\x00WAVE") is None


def _pillow_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB", **options: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30, 128)[: len(mode)]).save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("JPEG", "RGB", {}),
        ("JPEG", "RGB", {"progressive": True}),  # SOF2
        ("JPEG", "RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 32}),  # APP1 before the frame
        ("WEBP", "RGB", {}),  # lossy: VP8
        ("WEBP", "RGB", {"lossless": True}),  # VP8L
        ("WEBP", "RGBA", {}),  # alpha: VP8X + ALPH + VP8
    ],
)
def test_dimensions_of_files_pillow_writes(fmt: str, mode: str, options: dict[str, object]) -> None:
    for size in [(1, 1), (123, 45), (640, 480), (3000, 17)]:
        data = _pillow_bytes(fmt, size, mode, **options)
        assert _decode(data).size == size
        assert dimensions(data) == size
        assert sniff(data) == fmt.lower()


def test_dimensions_of_a_gif_is_its_logical_screen() -> None:
    assert dimensions(b"GIF89a\x01\x00\x02\x00") == (1, 2)
    assert dimensions(_pillow_bytes("GIF", (123, 45), "P")) == (123, 45)


def test_dimensions_of_garbage_is_none() -> None:
    assert dimensions(b"") is None
    assert dimensions(b"not an image at all") is None
    assert dimensions(b"GIF89a\x01\x00") is None  # truncated in its screen size
    assert dimensions(b"\x89PNG\r\n\x1a\n") is None  # truncated before IHDR
    assert dimensions(b"\xff\xd8\xff\xe0\x00\x10JFIF") is None  # truncated before SOF
    assert dimensions(b"RIFF\x00\x00\x00\x00WEBPVP8L") is None
    jpeg = encode(20, 10, "jpeg", SEED)
    assert dimensions(jpeg[: jpeg.index(b"\xff\xc0")]) is None


@pytest.mark.parametrize("fmt", ["gif", "bmp", "PNG", "jpg", ""])
def test_encode_rejects_unknown_format(fmt: str) -> None:
    with pytest.raises(ValueError, match="format"):
        encode(8, 8, fmt, SEED)


@pytest.mark.parametrize(
    ("width", "height"), [(0, 8), (8, 0), (-1, 8), (8, -5), (8193, 8), (8, 8193), (8, True)]
)
def test_encode_rejects_bad_size(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        encode(width, height, "png", SEED)


def test_encode_accepts_the_maximum_side() -> None:
    data = encode(8192, 1, "png", SEED)
    assert dimensions(data) == (8192, 1)
    assert _decode(data).size == (8192, 1)


if __name__ == "__main__":
    for fmt in FORMATS:
        for side in (1024, 4096):
            start = time.perf_counter()
            out = encode(side, side, fmt, SEED)
            ms = (time.perf_counter() - start) * 1000
            print(f"{fmt:5} {side}x{side}: {ms:7.1f} ms, {len(out):>8} bytes")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_b64_header_reads_format_and_size_from_a_prefix(fmt: str) -> None:
    import base64

    b64 = base64.b64encode(imaging.encode(640, 480, fmt, "x")).decode()
    assert imaging.b64_header(b64) == (fmt, (640, 480))
    assert imaging.b64_header("not base64!") == (None, None)


def test_b64_header_reaches_a_jpeg_size_behind_a_long_header() -> None:
    import base64

    raw = imaging.encode(64, 32, "jpeg", "x")
    # A 20 kB APP segment (as EXIF would be) between SOI and the frame header.
    app = b"\xff\xe1" + (20_002).to_bytes(2, "big") + b"\0" * 20_000
    b64 = base64.b64encode(raw[:2] + app + raw[2:]).decode()
    assert imaging.b64_header(b64) == ("jpeg", (64, 32))
