"""Reference images as clients send them: multipart files, JSON image refs and data: URLs.

Every image is checked by its magic bytes, so a text file named .png is a 400 naming the
parameter rather than a confusing upstream failure after money was reserved.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from proxy import imaging
from proxy.api import form_fields, inputs
from proxy.api.errors import bad_request
from proxy.domain import InputImage

MAX_IMAGES = 16
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def checked_image(data: bytes, param: str) -> InputImage:
    kind = imaging.sniff(data)
    if kind not in _MIME:
        raise bad_request(param, f"'{param}' must be a PNG, JPEG or WebP image",
                          code="invalid_image_format")
    return InputImage(mime=_MIME[kind], data=data)


def decode_data_url(url: str, param: str) -> InputImage:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_request(param, f"'{param}' must be a base64 data: URL of an image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(param, f"'{param}' holds invalid base64") from None
    return checked_image(data, param)


def image_ref(url: str, param: str) -> InputImage:
    """A reference image given by URL: https is handed on, data: URLs must hold an image."""
    if url.startswith("data:"):
        return decode_data_url(url, param)
    if not url.startswith("https://") or len(url) > 20_971_520:
        raise bad_request(param, f"'{param}' must be an https:// or data: URL")
    return InputImage(mime="application/octet-stream", url=url)


def json_image(value: Any, param: str) -> InputImage:
    """One ImageRefParam: exactly one of image_url or file_id (which we do not host)."""
    if not isinstance(value, dict):
        raise bad_request(param, f"'{param}' must be an object with 'image_url'")
    if "file_id" in value:
        raise bad_request(f"{param}.file_id", "file_id references are not supported; "
                                              "send image_url (https or data: URL)")
    url = value.get("image_url")
    if not isinstance(url, str):
        raise bad_request(f"{param}.image_url", f"'{param}.image_url' is required")
    return image_ref(url, f"{param}.image_url")


def json_images(value: Any) -> tuple[InputImage, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_IMAGES:
        raise bad_request("images", f"'images' must be a list of 1 to {MAX_IMAGES} image refs")
    return tuple(json_image(item, f"images[{i}]") for i, item in enumerate(value))


async def read_form(request: Request) -> tuple[dict[str, Any], list[InputImage],
                                               InputImage | None]:
    """Fields, images and mask of a multipart edit, as the official SDK sends it: `image` for
    one file, repeated `image[]` for several (and, defensively, `image[0]`, `image[1]`…);
    nested fields (`route[strategy]`) folded back into objects and lists."""
    texts: list[tuple[str, str]] = []
    images: list[InputImage] = []
    mask = None
    async with request.form(max_files=MAX_IMAGES + 1, max_fields=100) as form:
        for name, value in form.multi_items():
            if name == "image" or name.startswith("image["):
                images.append(await _file(value, "image"))
            elif name == "mask":
                mask = await _file(value, "mask")
            elif isinstance(value, str):
                texts.append((inputs.text(name, name), inputs.text(value, name)))
            else:
                raise bad_request(name, f"'{name}' must be a form field, not a file")
    if len(images) > MAX_IMAGES:
        raise bad_request("image", f"at most {MAX_IMAGES} images can be edited at once")
    return form_fields.nested(texts), images, mask


async def _file(value: str | UploadFile, param: str) -> InputImage:
    if isinstance(value, str):
        raise bad_request(param, f"'{param}' must be an uploaded image file")
    return checked_image(await value.read(), param)
