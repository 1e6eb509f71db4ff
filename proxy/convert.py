"""Make a delivered result match what was asked: the output format, and a known size.

Hosts that cannot choose the format (the Gemini API returns PNG) are converted here, once, off
the event loop, inside the attempt (after proxy.verify): an image that will not convert is the
upstream's failure, and the router fails over. Base64 is decoded only when a conversion is
actually needed. Pillow is imported lazily: requests that need no conversion never touch it.
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import replace

from proxy import imaging
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


async def conform(result: ImageResult, request: ImageRequest) -> ImageResult:
    """The result in the asked format with its size known (`converted_from` names the
    upstream's format if it was converted); UpstreamError if an image does not convert."""
    wanted = MIME[request.output_format]
    if any(image.mime != wanted for image in result.images):
        native = result.images[0].mime
        try:
            images = await asyncio.to_thread(_convert_all, result.images, request)
        except Exception as exc:  # Pillow raises many kinds on a corrupt image
            raise UpstreamError(Failure(
                Kind.UPSTREAM_BROKEN, f"upstream {native} image does not convert to "
                                      f"{request.output_format} ({type(exc).__name__})")) from None
        result = replace(result, images=images, converted_from=native)
    if result.size is None:
        result = replace(result, size=size_of(result.images[0]))
    return result


def size_of(image: Image) -> str | None:
    """'WxH' read from the image header, decoding only a prefix of the base64."""
    _, found = imaging.b64_header(image.b64)
    return f"{found[0]}x{found[1]}" if found else None


def _convert_all(images: tuple[Image, ...], request: ImageRequest) -> tuple[Image, ...]:
    wanted = MIME[request.output_format]
    return tuple(image if image.mime == wanted else _convert(image, request) for image in images)


def _convert(image: Image, request: ImageRequest) -> Image:
    from PIL import Image as PILImage

    data = image.data if image.data is not None else base64.b64decode(image.b64)
    with PILImage.open(io.BytesIO(data)) as source:
        source.load()
        fmt = request.output_format
        picture = source.convert("RGB") if fmt == "jpeg" and source.mode != "RGB" else source
        out = io.BytesIO()
        options: dict[str, int] = {}
        if fmt in ("jpeg", "webp"):
            options["quality"] = request.output_compression or 90
        picture.save(out, _PIL_FORMAT[fmt], **options)
    converted = out.getvalue()
    return replace(image, mime=MIME[fmt], b64=base64.b64encode(converted).decode("ascii"),
                   data=converted if image.data is not None else None)
