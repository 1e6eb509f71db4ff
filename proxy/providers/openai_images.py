"""The `openai_images` protocol: OpenAI's /images/generations and /images/edits, any host.

A host that speaks this schema is a routes/ entry, not code: its paths (`generations_path`,
`edits_path`, with {model}), auth style (`auth_header`, `auth_scheme`), the fields it cannot
take (`omit_fields`), a `response_format` to ask for, its sizes (`sizes` or `arbitrary_sizes`)
and its error codes (`error_kinds`) are provider or route options. A host that streams partial
images as OpenAI does (option `stream_partials`) is asked to when the client streams, and
its drafts are relayed as they arrive (image_events.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy import geometry
from proxy.catalog import Route
from proxy.domain import ImageRequest, InputImage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import image_events, sizes
from proxy.providers import images_api as api
from proxy.providers.base import Adapter, Flow, UpstreamCall, check

# The GPT image models' fixed sizes, for routes that list none of their own.
DEFAULT_SIZES = ("1024x1024", "1536x1024", "1024x1536")
ERROR_KINDS: dict[str, Kind] = {
    "moderation_blocked": Kind.CONTENT_BLOCKED,
    "content_policy_violation": Kind.CONTENT_BLOCKED,
    "image_generation_user_error": Kind.BAD_REQUEST,
    "invalid_api_key": Kind.AUTH,
    # Our account, not the client's request: an operator has to act.
    "insufficient_quota": Kind.AUTH,
    "billing_hard_limit_reached": Kind.AUTH,
    "rate_limit_exceeded": Kind.RATE_LIMITED,
    # A shut-down or misnamed model is the route's fault; another route may serve.
    "model_not_found": Kind.UPSTREAM_BROKEN,
}
# Fields that change the picture: a host that cannot take one must not drop it silently.
_DEFAULTS = {"quality": "auto", "background": "auto", "output_format": "png",
             "moderation": "auto", "input_fidelity": "low"}
_MATERIAL = frozenset({*_DEFAULTS, "output_compression", "style"})


def fields(request: ImageRequest, route: Route) -> dict[str, Any]:
    """The body fields common to generations and edits, as OpenAI names them."""
    width, height = sizes.choose_size(request, route, DEFAULT_SIZES)
    body: dict[str, Any] = {"model": route.upstream_model, "prompt": request.prompt,
                            "n": request.n, "size": geometry.size_text(width, height)}
    wanted = {"quality": request.quality, "background": request.background,
              "output_format": request.output_format,
              "output_compression": request.output_compression,
              "moderation": request.moderation, "style": request.style, "user": request.user,
              "input_fidelity": request.input_fidelity if request.kind == "edit" else None}
    omitted = api.remembered(route, "omit_fields",
                             lambda: frozenset(api.option(route, "omit_fields", ())))
    for name, value in wanted.items():
        if value is None or (value == _DEFAULTS.get(name) and name != "output_format"):
            continue
        if name in omitted:
            if name in _MATERIAL and value != _DEFAULTS.get(name):
                raise UpstreamError(Failure(Kind.BAD_REQUEST, f"route {route.id} cannot honour "
                                                              f"'{name}'={value!r}"))
            continue
        body[name] = value
    if response_format := api.option(route, "response_format"):
        body["response_format"] = response_format
    if streams(request, route):
        body.update(stream=True, partial_images=request.partial_images)
    return {**body, **api.extra_body(route)}


def streams(request: ImageRequest, route: Route) -> bool:
    """Whether to ask the host for partial images: the client streams and asked for some,
    and the host streams them (option `stream_partials`: OpenAI's gpt-image models do)."""
    return request.partials is not None and request.partial_images > 0 and \
        bool(api.option(route, "stream_partials", False))


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    """Generations as JSON. Anything with input images goes to edits (OpenAI's generations
    take none): multipart, or OpenAI's JSON edit variant when an input is a URL or
    `moderation` is set (the multipart schema has neither)."""
    headers = api.auth_headers(route)
    body = fields(request, route)
    if not request.images and request.mask is None:
        return UpstreamCall("POST", api.endpoint(route, "generations_path",
                                                 "/images/generations"), headers, json=body)
    url = api.endpoint(route, "edits_path", "/images/edits")
    inputs = (*request.images, *((request.mask,) if request.mask else ()))
    if any(i.data is None for i in inputs) or "moderation" in body:
        if not api.option(route, "json_edits", True):
            raise UpstreamError(Failure(Kind.BAD_REQUEST, f"route {route.id} takes uploaded "
                                                          "images only, without 'moderation'"))
        body["images"] = [{"image_url": api.data_url(i)} for i in request.images]
        if request.mask:
            body["mask"] = {"image_url": api.data_url(request.mask)}
        return UpstreamCall("POST", url, headers, json=body)
    name = "image" if len(request.images) == 1 else "image[]"
    files = tuple((name, _file(f"image-{i}", image)) for i, image in enumerate(request.images))
    if request.mask:
        files += (("mask", _file("mask", request.mask)),)
    return UpstreamCall("POST", url, headers, form={k: _form(v) for k, v in body.items()},
                        files=files)


def _file(stem: str, image: InputImage) -> tuple[str, bytes, str]:
    assert image.data is not None
    return f"{stem}.{api.EXTENSION.get(image.mime, 'png')}", image.data, image.mime


def _form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flow(request: ImageRequest, route: Route) -> Flow:
    # A generator itself, so even building the call runs inside the driver.
    kinds = api.error_kinds(route, ERROR_KINDS)
    call = build(request, route)
    if not streams(request, route):
        return (yield from api.exchange(call, kinds, request.output_format))
    reply = yield replace(call, partials=image_events.partial)
    if reply is not None and reply.status < 300 and image_events.is_stream(reply):
        return image_events.result(reply, kinds, request.output_format)
    # An error, or a host that answered whole after all.
    return (yield from api.answered(check(reply, lambda r: api.classify(r, kinds)), kinds,
                                    request.output_format))


ADAPTER = Adapter("openai_images", flow, images_per_call=10)
