"""What an attempt delivered, checked before anything is billed: every image a real one.

An upstream's 200 is not proof of an image. Each image must open with the magic bytes of a
supported format, carry a header that gives its pixel size, stay within the pixel limit (a
12000x12000 PNG is refused before anything decodes it) and end as its format ends (a
truncated PNG lacks its IEND). Base64 stays text on the b64_json path: only its first and
last few hundred characters are decoded for this. Where the bytes are needed anyway (a link),
the whole image is decoded strictly here, inside the attempt, so garbage fails over instead of
failing the response. More images than asked are cut to n: a tenant is billed for n.

A failed check is UPSTREAM_BROKEN: the router moves on to the next route and the host's
health counts it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import replace

from proxy import imaging
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError

log = logging.getLogger("switchyard.verify")

# GIF is taken too: it is converted to the asked format (proxy.convert).
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
_URL_SAFE = str.maketrans("-_", "+/")
# The biggest legitimate image is a 4K tier's widest ratio (~17 megapixels); twice that.
DEFAULT_MAX_PIXELS = 36_000_000
_PNG_END = b"IEND\xaeB`\x82"
_TAIL_CHARS = 1368  # the last 1 KB of an image, as base64: room for bytes after a JPEG's EOI
_DECODE_IN_THREAD = 256 * 1024  # base64 longer than this is decoded off the event loop
_MAX_UPSTREAM_ID = 200  # characters of a host's id for its job kept in the ledger


def broken(message: str) -> UpstreamError:
    return UpstreamError(Failure(Kind.UPSTREAM_BROKEN, message))


async def checked(result: ImageResult, request: ImageRequest,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageResult:
    """The result with every image verified (its mime type set from its magic bytes, and its
    bytes decoded when a link needs them), cut to the n asked; UpstreamError if any is not an
    image Switchyard can deliver."""
    images, made = result.images, result.made
    if len(images) > request.n:
        log.warning("upstream returned %d images for n=%d; delivering %d", len(images),
                    request.n, request.n)
        images, made = images[:request.n], result.images_made
    verified = [_verified(image, max_pixels) for image in images]
    images = tuple(image for image, _ in verified)
    if request.response_format == "url":
        images = tuple([await decoded(image) for image in images])
    # The size the header gave, so proxy.convert need not read the header again.
    size = result.size or (f"{verified[0][1][0]}x{verified[0][1][1]}" if verified else None)
    return replace(result, images=images, size=size, made=made,
                   upstream_id=upstream_id(result.upstream_id))


def upstream_id(value: object) -> str | None:
    """A host's id for its job as the ledger keeps it: text (a number is spelled), without
    control characters (PostgreSQL refuses a NUL), at most _MAX_UPSTREAM_ID long; None for
    anything else (a host that sent an object: the id only helps to find its job)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value if value.isprintable() else "".join(c for c in value if c.isprintable())
    text = text[:_MAX_UPSTREAM_ID]
    return text or None


def header_checked(image: Image, max_pixels: int) -> Image:
    """The image if its head and tail are those of a supported format within the pixel limit
    (with its mime type as its bytes say); UpstreamError otherwise. Base64 that is wrapped in
    lines or URL-safe is delivered as plain base64 (only when the plain check fails: looking
    for either costs a scan of megabytes)."""
    return _verified(image, max_pixels)[0]


def _verified(image: Image, max_pixels: int) -> tuple[Image, tuple[int, int]]:
    try:
        return _header_checked(image, max_pixels)
    except UpstreamError:
        plain = "".join(image.b64.split()).translate(_URL_SAFE)
        if plain == image.b64:
            raise
        return _header_checked(replace(image, b64=plain), max_pixels)


def _header_checked(image: Image, max_pixels: int) -> tuple[Image, tuple[int, int]]:
    b64 = image.b64
    if not b64 or not b64.isascii() or len(b64) % 4 == 1:
        raise broken("upstream image is not base64")
    kind, found = imaging.b64_header(b64)
    if kind not in MIME:
        raise broken("upstream returned something that is not a PNG, JPEG, WebP or GIF image")
    if found is None and kind == "jpeg":
        found = _whole_header(b64)  # a JPEG's frame can follow tens of KB of metadata
    if found is None:
        raise broken(f"upstream {kind} image has no readable header")
    if found[0] * found[1] > max_pixels:
        raise broken(f"upstream image of {found[0]}x{found[1]} pixels is over the limit of "
                     f"{max_pixels}")
    if not _ends_whole(kind, b64):
        raise broken(f"upstream {kind} image is truncated or malformed")
    return (image if image.mime == MIME[kind] else replace(image, mime=MIME[kind])), found


def _ends_whole(kind: str, b64: str) -> bool:
    """Whether the image ends as its format ends: PNG with IEND, JPEG with an EOI near the
    end, WebP where its RIFF header says."""
    padded = b64 + "=" * (-len(b64) % 4)
    try:
        tail = base64.b64decode(padded[-_TAIL_CHARS:] if len(padded) > _TAIL_CHARS else padded,
                                validate=True)
        head = base64.b64decode(padded[:16], validate=True)
    except (binascii.Error, ValueError):
        return False
    if kind == "png":  # decoders stop at IEND: bytes after it are harmless
        return _PNG_END in tail
    if kind == "jpeg":
        return b"\xff\xd9" in tail
    if kind == "gif":
        return b"\x3b" in tail
    size = len(padded) // 4 * 3 - (len(padded) - len(padded.rstrip("=")))
    riff = int.from_bytes(head[4:8], "little")
    return riff + 8 <= size  # shorter is truncated; bytes past the RIFF are harmless


def _whole_header(b64: str) -> tuple[int, int] | None:
    """The pixel size read from the whole image (rare: a header past the prefixes
    imaging.b64_header tries)."""
    try:
        return imaging.dimensions(_strict(b64))
    except (binascii.Error, ValueError):
        return None


async def decoded(image: Image) -> Image:
    """The image with its bytes, decoded strictly (base64 that does not decode is broken)."""
    try:
        if len(image.b64) > _DECODE_IN_THREAD:
            data = await asyncio.to_thread(_strict, image.b64)
        else:
            data = _strict(image.b64)
    except (binascii.Error, ValueError):
        raise broken("upstream image is not valid base64") from None
    return replace(image, data=data)


def _strict(b64: str) -> bytes:
    return base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
