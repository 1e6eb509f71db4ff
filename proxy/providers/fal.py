"""The `fal` protocol: fal's queue API: submit, poll the status URL, fetch the result.

The status, result and cancel URLs come back in the submit reply and are followed as given
(sub-path endpoints such as `/edit` are not part of them). A request that failed still ends
COMPLETED: its error only shows when the result is fetched. Result images sit on fal's CDN and
are downloaded here. Field names, pacing and content-block markers are route data.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

import orjson

from proxy import geometry
from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError, from_status, retry_after
from proxy.providers.base import Adapter, Flow, Step, UpstreamCall, UpstreamReply, always, check
from proxy.providers.results import json_or_none, result_image, safe_text
from proxy.providers.upstream import (
    Pacing,
    api_key,
    auth_for,
    mask_refused,
    pauses,
    reference,
    renamed,
    shape_values,
)

FIELDS = {"prompt": "prompt", "n": "num_images", "images": "image_urls",
          "aspect_ratio": "aspect_ratio", "resolution": "resolution",
          "output_format": "output_format", "seed": "seed"}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "webp": "webp"}
BLOCK_TYPES = ("content_policy_violation",)
BLOCK_MARKERS = ("nsfw", "content policy", "safety", "flagged")
# fal's infrastructure error types (`error_type`, X-Fal-Error-Type) that mean "slow", not "down".
TIMEOUT_TYPES = ("request_timeout", "startup_timeout")
PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Options(Pacing):
    """How to talk to one route: read from the provider's options, then the route's."""

    edit_suffix: str = "/edit"  # requests with reference images go to {model}{edit_suffix}
    edit_aspect_ratio: str = "auto"  # an edit with no size asked keeps the input's shape
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=dict)
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    inline_images: bool = True  # uploaded bytes go as data URIs (fal's CDN docs accept them)
    result_expiry_s: int | None = None  # ask fal's CDN to drop results after this long
    block_types: tuple[str, ...] = BLOCK_TYPES
    block_markers: tuple[str, ...] = BLOCK_MARKERS

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        expiry = given.get("result_expiry_s")
        return cls(
            **Pacing.given(given),
            edit_suffix=str(given.get("edit_suffix", "/edit")),
            edit_aspect_ratio=str(given.get("edit_aspect_ratio", "auto")),
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions=dict(given.get("resolutions", {})),
            extra_input=dict(given.get("extra_input", {})),
            inline_images=bool(given.get("inline_images", True)),
            result_expiry_s=None if expiry is None else int(expiry),
            block_types=tuple(given.get("content_block_types", BLOCK_TYPES)),
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
        )


def arguments(request: ImageRequest, options: Options) -> dict[str, Any]:
    """The model's input: the request in the endpoint's own vocabulary."""
    if request.mask is not None:
        raise mask_refused()
    values = shape_values(request, options.resolutions, options.output_formats,
                          options.edit_aspect_ratio)
    values["n"] = request.n
    if request.images:
        values["images"] = [reference(image, options.inline_images) for image in request.images]
    return renamed(values, options.fields, options.extra_input)


def build(request: ImageRequest, route: Route, key: str, options: Options) -> UpstreamCall:
    """The queue submit: the model's endpoint, or its edit endpoint when images are given."""
    path = route.upstream_model + (options.edit_suffix if request.images else "")
    headers = {"Authorization": f"Key {key}"}
    if options.result_expiry_s is not None:
        headers["X-Fal-Object-Lifecycle-Preference"] = orjson.dumps(
            {"expiration_duration_seconds": options.result_expiry_s}).decode()
    url = f"{route.provider.base_url}/{path}"
    if hook := route.options.get("callback_url"):
        url += f"?fal_webhook={quote(str(hook), safe='')}"
    return UpstreamCall("POST", url, headers=headers, json=arguments(request, options))


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """An HTTP error as a failure; None for 2xx. Model errors carry `detail` as a list of
    {loc, msg, type}; infrastructure errors as a string with `error_type`."""
    if 200 <= reply.status < 300:
        return None
    status = reply.status
    body = json_or_none(reply)
    if status in (401, 403):
        # No upstream words: an auth detail may quote the key, and the client cannot act on it.
        return Failure(Kind.AUTH, f"fal refused the API key (HTTP {status})", None, status)
    text = _detail_text(body) or safe_text(reply.body.decode("utf-8", "replace")) or "no detail"
    if _blocked(body, options):
        return Failure(Kind.CONTENT_BLOCKED, f"fal refused the content: {text}", None, status)
    if status == 429:
        return Failure(Kind.RATE_LIMITED, "fal rate limit reached", retry_after(reply.headers),
                       status)
    if status == 404:
        return Failure(Kind.UPSTREAM_BROKEN, f"fal has no such endpoint or request: {text}",
                       None, status)
    if status in (400, 413, 422):
        return Failure(Kind.BAD_REQUEST, f"fal rejected the input: {text}", None, status)
    error_type = reply.headers.get("x-fal-error-type") or (
        body.get("error_type") if isinstance(body, dict) else None)
    generic = from_status(status, reply.headers)
    kind = Kind.TIMEOUT if error_type in TIMEOUT_TYPES else generic.kind
    return Failure(kind, f"fal error (HTTP {status}): {text}", generic.retry_after_s, status)


def _object(reply: UpstreamReply, what: str) -> dict[str, Any]:
    """A 2xx reply's JSON object. Anything else (a list, null) is fal's breakage, so it fails
    over as UPSTREAM_BROKEN instead of escaping the flow as an AttributeError (a 500)."""
    body = reply.json()
    if not isinstance(body, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, f"fal returned a malformed {what}",
                                    None, reply.status))
    return body


def _detail_text(body: Any) -> str:
    """`detail` as one line: 'body.prompt: field required' for each model error."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = [f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
                 if isinstance(item, dict) else str(item) for item in detail]
        return safe_text("; ".join(parts))
    return safe_text(detail) if detail else ""


def _blocked(body: Any, options: Options) -> bool:
    """A content refusal: a blocking error `type`, or a marker in a message (not in `loc`,
    so a validation error on a field such as safety_tolerance is not taken for one)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    items = [i for i in detail if isinstance(i, dict)] if isinstance(detail, list) else []
    if {i.get("type") for i in items} & set(options.block_types):
        return True
    messages = [str(i.get("msg", "")) for i in items] if items else [str(detail or "")]
    return any(m.lower() in text.lower() for m in options.block_markers for text in messages)


def _auth(url: str, route: Route, key: str) -> dict[str, str]:
    return auth_for(url, route, "Authorization", f"Key {key}")


def _queue_url(submitted: Mapping[str, Any], name: str, route: Route) -> str:
    """A URL from the submit reply; rebuilt from the app id only if fal left it out."""
    if submitted.get(name):
        return str(submitted[name])
    app = "/".join(route.upstream_model.split("/")[:2])
    base = f"{route.provider.base_url}/{app}/requests/{submitted['request_id']}"
    return {"status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}.get(name, base)


def wait_done(submitted: Mapping[str, Any], route: Route, key: str, options: Options) -> Poll:
    """Poll the status URL until COMPLETED. Past the route's max wait, or when the driver
    throws a timeout in, cancel the request (it is only guaranteed while queued)."""
    waits = pauses(options, "fal request unfinished")
    status: dict[str, Any] = {"status": "IN_QUEUE"}
    try:
        while status.get("status") in PENDING:
            yield next(waits)
            url = _queue_url(submitted, "status_url", route)
            reply = check((yield UpstreamCall("GET", url, _auth(url, route, key), kind="poll")),
                          partial(classify, options=options))
            status = _object(reply, "status")
    except UpstreamError as exc:
        if exc.failure.kind is Kind.TIMEOUT and status.get("status") in PENDING:
            url = _queue_url(submitted, "cancel_url", route)
            yield UpstreamCall("PUT", url, _auth(url, route, key), kind="cancel")
        raise
    return status


def status_failure(status: Mapping[str, Any], options: Options) -> Failure | None:
    """A finished status that already names an error (FAILED, or COMPLETED with `error`)."""
    error = status.get("error")
    if status.get("status") == "COMPLETED" and not error:
        return None
    text = safe_text(error or f"request ended {status.get('status')}")
    if any(marker.lower() in text.lower() for marker in options.block_markers):
        return Failure(Kind.CONTENT_BLOCKED, f"fal refused the content: {text}")
    kind = Kind.TIMEOUT if status.get("error_type") in TIMEOUT_TYPES else Kind.UPSTREAM_BROKEN
    return Failure(kind, f"fal request failed: {text}")


def result_images(output: Mapping[str, Any], options: Options) -> list[dict[str, Any]]:
    """The output's images, without those fal's safety checker flagged (they are blanks)."""
    images = [i for i in output.get("images") or [] if isinstance(i, dict) and i.get("url")]
    flags = output.get("has_nsfw_concepts") or []
    kept = [image for i, image in enumerate(images) if not (i < len(flags) and flags[i])]
    if not kept:
        note = safe_text(output.get("description") or "")
        if any(flags) or any(m.lower() in note.lower() for m in options.block_markers):
            raise UpstreamError(Failure(Kind.CONTENT_BLOCKED, f"fal refused the content: "
                                                              f"{note or 'flagged as unsafe'}"))
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "fal returned no image"))
    return kept


def collect(output: Mapping[str, Any], request_id: str, request: ImageRequest,
            options: Options) -> Flow:
    """The result's images: data URIs as given, CDN URLs downloaded now (no key sent there)."""
    found = result_images(output, options)[: request.n]
    images: list[Image] = []
    for item in found:
        images.append((yield from result_image(str(item["url"]))))
    first = found[0]
    size = geometry.size_text(int(first["width"]), int(first["height"])) \
        if first.get("width") and first.get("height") else None
    return ImageResult(images=tuple(images), size=size, upstream_id=request_id)


def flow(request: ImageRequest, route: Route) -> Flow:
    """Submit to the queue, poll to COMPLETED, fetch the result, then its images."""
    key = api_key(route)
    options = Options.of(route)
    classified = partial(classify, options=options)
    submitted = _object(check((yield build(request, route, key, options)), classified), "submit")
    if not submitted.get("request_id"):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "fal returned no request id"))
    status = yield from wait_done(submitted, route, key, options)
    if (failure := status_failure(status, options)) is not None:
        raise UpstreamError(failure)
    url = _queue_url(submitted, "response_url", route)
    result = yield UpstreamCall("GET", url, _auth(url, route, key), kind="fetch", final=True)
    output = _object(check(result, classified), "result")
    return (yield from collect(output, str(submitted["request_id"]), request, options))


# fal's Nano Banana endpoints return 1-4 images per request (`num_images`).
ADAPTER = Adapter("fal", flow, images_per_call=4, takes_callback=always)
