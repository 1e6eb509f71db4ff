"""proxy.verify: what a host returns is an image before it is billed, and a real image from a
real host is never refused for the way its bytes or base64 are laid out."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest

from proxy import imaging, verify
from proxy.bench.hostile import huge_png
from proxy.domain import Geometry, Image, ImageRequest, ImageResult
from proxy.failures import Kind, UpstreamError

LIMIT = 36_000_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def request(n: int = 1, response_format: str = "b64_json") -> ImageRequest:
    return ImageRequest(kind="generate", model="m", prompt="p", n=n,
                        geometry=Geometry("1:1", "1K", None, "default"), output_format="png",
                        response_format=response_format)


def refused(image: Image) -> str:
    with pytest.raises(UpstreamError) as caught:
        verify.header_checked(image, LIMIT)
    assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN
    return caught.value.failure.message


def gif(width: int = 3, height: int = 2) -> bytes:
    return (b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"
            + b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00\x02\x02\x44\x01\x00"
            + b"\x3b")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_real_images_pass_with_the_mime_their_bytes_say(fmt: str) -> None:
    data = imaging.encode(640, 480, fmt, "v")
    checked = verify.header_checked(Image("application/octet-stream", b64(data)), LIMIT)
    assert checked.mime == f"image/{fmt}" and checked.b64 == b64(data)


@pytest.mark.parametrize(("data", "why"), [
    (b"this is not an image, " * 50, "not a PNG"),
    (huge_png(12000, 12000), "over the limit"),
    (imaging.encode(64, 64, "png", "t")[:-30], "truncated"),
    (imaging.encode(64, 64, "webp", "t")[:-8], "truncated"),
])
def test_what_is_not_a_whole_image_is_upstream_broken(data: bytes, why: str) -> None:
    assert why in refused(Image("image/png", b64(data)))


def test_base64_in_lines_or_url_safe_is_delivered_plain() -> None:
    data = imaging.encode(300, 200, "png", "lines")
    plain = b64(data)
    wrapped = "\n".join(plain[i:i + 76] for i in range(0, len(plain), 76)) + "\n"
    assert verify.header_checked(Image("image/png", wrapped), LIMIT).b64 == plain
    url_safe = base64.urlsafe_b64encode(data).decode()
    if url_safe != plain:
        assert verify.header_checked(Image("image/png", url_safe), LIMIT).b64 == plain


def test_bytes_after_the_end_are_harmless() -> None:
    """Decoders stop at PNG's IEND, JPEG's EOI and WebP's RIFF size."""
    for fmt in ("png", "jpeg", "webp"):
        data = imaging.encode(64, 64, fmt, "tail") + b"\x00" * 10
        assert verify.header_checked(Image("image/png", b64(data)), LIMIT).mime == \
            f"image/{fmt}"


def test_a_jpeg_whose_frame_follows_big_metadata_passes() -> None:
    data = imaging.encode(320, 240, "jpeg", "meta")
    app = b"\xff\xe1" + struct.pack(">H", 65535) + b"\x00" * 65533  # EXIF-sized, twice
    fat = data[:2] + app + app + data[2:]
    checked = verify.header_checked(Image("image/jpeg", b64(fat)), LIMIT)
    assert checked.mime == "image/jpeg"


def test_a_gif_passes_to_be_converted() -> None:
    assert verify.header_checked(Image("image/gif", b64(gif())), LIMIT).mime == "image/gif"


def test_more_images_than_asked_are_cut_to_n() -> None:
    images = tuple(Image("image/png", b64(imaging.encode(8, 8, "png", str(i))))
                   for i in range(10))
    result = asyncio.run(verify.checked(ImageResult(images=images), request(n=2), LIMIT))
    assert [i.b64 for i in result.images] == [i.b64 for i in images[:2]]


def test_a_link_decodes_strictly_inside_the_attempt() -> None:
    data = imaging.encode(64, 64, "png", "link")
    good = asyncio.run(verify.checked(ImageResult(images=(Image("image/png", b64(data)),)),
                                      request(response_format="url"), LIMIT))
    assert good.images[0].data == data
    text = b64(data)
    middle = len(text) // 2
    bad = Image("image/png", text[:middle] + "*" + text[middle + 1:])
    with pytest.raises(UpstreamError) as caught:
        asyncio.run(verify.checked(ImageResult(images=(bad,)), request(response_format="url"),
                                   LIMIT))
    assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN
