"""Format conversion and size discovery for delivered images."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image as PILImage

from proxy import convert, imaging
from proxy.domain import Geometry, Image, ImageRequest, ImageResult
from proxy.failures import Kind, UpstreamError


def request(fmt: str, compression: int | None = None) -> ImageRequest:
    return ImageRequest(kind="generate", model="m", prompt="p", n=1,
                        geometry=Geometry("1:1", "1K", None, "default"), output_format=fmt,
                        response_format="b64_json", output_compression=compression)


def png_image(width: int = 40, height: int = 30, mode: str = "RGB") -> Image:
    out = io.BytesIO()
    PILImage.new(mode, (width, height), (10, 20, 30, 128)[: len(mode)]).save(out, "PNG")
    return Image(mime="image/png", b64=base64.b64encode(out.getvalue()).decode())


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_converts_to_the_asked_format(fmt: str, pil: str) -> None:
    result = asyncio.run(convert.conform(
        ImageResult(images=(png_image(), png_image(8, 8, "RGBA"))), request(fmt, 80)))
    assert result.converted_from == "image/png"
    for image in result.images:
        assert image.mime == f"image/{fmt}"
        decoded = PILImage.open(io.BytesIO(base64.b64decode(image.b64)))
        assert decoded.format == pil
    assert result.size == "40x30"


def test_matching_format_passes_through_untouched() -> None:
    original = png_image()
    result = asyncio.run(convert.conform(ImageResult(images=(original,)), request("png")))
    assert result.converted_from is None
    assert result.images[0] is original
    assert result.size == "40x30"


def test_known_size_is_kept() -> None:
    result = asyncio.run(convert.conform(ImageResult(images=(png_image(),), size="1x1"),
                                         request("png")))
    assert result.size == "1x1"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_size_of_reads_only_the_header(fmt: str) -> None:
    data = imaging.encode(1248, 832, fmt, "seed")
    image = Image(mime=convert.MIME[fmt], b64=base64.b64encode(data).decode())
    assert convert.size_of(image) == "1248x832"


def test_size_of_garbage_is_none() -> None:
    assert convert.size_of(Image(mime="image/png", b64="bm90IGFuIGltYWdl")) is None


def test_an_image_that_does_not_convert_is_the_upstreams_failure() -> None:
    """Inside the attempt, so the router fails over (it was a 500 after the route was done)."""
    garbage = Image(mime="image/png", b64=base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 99
                                                           ).decode())
    with pytest.raises(UpstreamError) as caught:
        asyncio.run(convert.conform(ImageResult(images=(garbage,)), request("jpeg")))
    assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN
