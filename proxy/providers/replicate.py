"""The `replicate` protocol: one Replicate prediction per image, waited on, polled, then fetched.

A prediction is created with `Prefer: wait` so fast models answer in one call; one still
running comes back unfinished and is polled at its `urls.get`. Output files expire after an
hour, so they are always downloaded here and the client gets bytes. Model input field names,
poll pacing and the content-block markers are route data (routes `options`), because the
vendor's schemas differ per model and change.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError, from_status, retry_after
from proxy.providers import webhooks
from proxy.providers.base import Adapter, Flow, Step, UpstreamCall, UpstreamReply, always, check
from proxy.providers.results import json_or_none, result_image, safe_text
from proxy.providers.upstream import (
    Pacing,
    api_key,
    bearer,
    mask_refused,
    pauses,
    reference,
    renamed,
    shape_values,
)

# Field names of the Nano Banana family's input schema; a route overrides any of them
# ("" leaves the field out, e.g. resolution for google/nano-banana).
FIELDS = {"prompt": "prompt", "images": "image_input", "aspect_ratio": "aspect_ratio",
          "resolution": "resolution", "output_format": "output_format", "seed": ""}
# The asked format -> the model's token; webp is asked as png and converted by Switchyard.
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "png"}
BLOCK_MARKERS = ("flagged as sensitive", "E005", "NSFW", "content policy", "safety")
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
_RESETS_IN = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s")

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Options(Pacing):
    """How to talk to one route: read from the provider's options, then the route's."""

    prefer_wait_s: int = 60  # 0: no Prefer header, poll from the start
    version: str = ""  # set: POST /predictions with this version (community models)
    deployment: bool = False  # POST /deployments/{upstream_model}/predictions
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=dict)  # tier -> token, if not equal
    edit_aspect_ratio: str = "match_input_image"  # an edit with no size asked keeps the input's
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    block_markers: tuple[str, ...] = BLOCK_MARKERS
    mask_as_reference: bool = False  # else a mask is refused: these models cannot apply one

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        return cls(
            **Pacing.given(given),
            prefer_wait_s=int(given.get("prefer_wait_s", 60)),
            version=str(given.get("version", "")), deployment=bool(given.get("deployment")),
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions=dict(given.get("resolutions", {})),
            edit_aspect_ratio=str(given.get("edit_aspect_ratio", "match_input_image")),
            extra_input=dict(given.get("extra_input", {})),
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
            mask_as_reference=bool(given.get("mask_as_reference")),
        )


def model_input(request: ImageRequest, options: Options) -> dict[str, Any]:
    """The prediction's `input`: the request in the model's own vocabulary. File inputs go as
    data URIs (Replicate's docs advise it below about 1 MB)."""
    values = shape_values(request, options.resolutions, options.output_formats,
                          options.edit_aspect_ratio)
    references = list(request.images)
    if request.mask is not None:
        if not options.mask_as_reference:
            raise mask_refused()
        references.append(request.mask)
    if references:
        values["images"] = [reference(image) for image in references]
    return renamed(values, options.fields, options.extra_input)


def build(request: ImageRequest, route: Route, key: str, options: Options) -> UpstreamCall:
    """The create-prediction call: official model, deployment, or a pinned version."""
    base = route.provider.base_url
    body: dict[str, Any] = {"input": model_input(request, options)}
    if options.version:
        url = f"{base}/predictions"
        body["version"] = options.version
    elif options.deployment:
        url = f"{base}/deployments/{route.upstream_model}/predictions"
    else:
        url = f"{base}/models/{route.upstream_model}/predictions"
    if hook := route.options.get("callback_url"):
        # `completed` alone: start and output events would only wake the flow early.
        body["webhook"], body["webhook_events_filter"] = hook, ["completed"]
    headers = {"Authorization": f"Bearer {key}"}
    # Wait no longer than the connection may stay open, or an accepted job looks like a timeout.
    wait = min(options.prefer_wait_s, 60, int(route.provider.timeout_s) - 5)
    if wait >= 1:
        headers["Prefer"] = f"wait={wait}"
    return UpstreamCall("POST", url, headers=headers, json=body)


def classify(reply: UpstreamReply) -> Failure | None:
    """An HTTP error (problem+json `detail`/`title`/`status`) as a failure; None for 2xx."""
    if 200 <= reply.status < 300:
        return None
    detail = _problem_text(reply)
    status = reply.status
    if status == 429:
        after = retry_after(reply.headers)
        if after is None and (found := _RESETS_IN.search(detail)):
            after = float(found.group(1))
        return Failure(Kind.RATE_LIMITED, "Replicate rate limit reached", after, status)
    if status in (401, 403):
        # Not the detail: a host may quote the token it refused.
        return Failure(Kind.AUTH, f"Replicate refused the API token (HTTP {status})", None,
                       status)
    if status == 402:
        return Failure(Kind.AUTH, f"Replicate account cannot pay: {detail}", None, status)
    if status == 404:
        return Failure(Kind.UPSTREAM_BROKEN, f"Replicate has no such model or prediction: "
                                             f"{detail}", None, status)
    if status in (400, 409, 413, 422):
        return Failure(Kind.BAD_REQUEST, f"Replicate rejected the input: {detail}", None, status)
    generic = from_status(status, reply.headers)
    return Failure(generic.kind, f"Replicate error (HTTP {status}): {detail}",
                   generic.retry_after_s, status)


def _problem_text(reply: UpstreamReply) -> str:
    body = json_or_none(reply)
    if isinstance(body, dict):
        return safe_text(body.get("detail") or body.get("title") or "no detail")
    return safe_text(reply.body.decode("utf-8", "replace") or "no detail")


def classify_prediction(prediction: Mapping[str, Any], markers: tuple[str, ...]) -> Failure:
    """A prediction that ended without output: refused content, expiry or a failed run."""
    status = str(prediction.get("status"))
    error = safe_text(prediction.get("error") or f"prediction {status}")
    if status == "failed" and any(m.lower() in error.lower() for m in markers):
        return Failure(Kind.CONTENT_BLOCKED, f"Replicate refused the content: {error}")
    if status == "aborted":
        return Failure(Kind.TIMEOUT, "Replicate aborted the prediction before it started")
    if status == "canceled":
        return Failure(Kind.UPSTREAM_BROKEN, "Replicate prediction was canceled")
    return Failure(Kind.UPSTREAM_BROKEN, f"Replicate prediction {status}: {error}")


def _prediction_url(prediction: Mapping[str, Any], name: str, route: Route) -> str:
    urls = prediction.get("urls") or {}
    fallback = f"{route.provider.base_url}/predictions/{prediction['id']}"
    return str(urls.get(name) or (fallback if name == "get" else f"{fallback}/cancel"))


def wait_done(prediction: dict[str, Any], route: Route, key: str, options: Options) -> Poll:
    """Poll until the prediction ends. Past the route's max wait, or when the driver throws
    a timeout in, cancel the prediction (so it stops billing) before giving up."""
    waits = pauses(options, "Replicate prediction unfinished")
    try:
        while prediction.get("status") not in TERMINAL:
            yield next(waits)
            url = _prediction_url(prediction, "get", route)
            reply = check((yield UpstreamCall("GET", url, bearer(url, route, key),
                                              kind="poll")), classify)
            prediction = reply.json()
            if not isinstance(prediction, dict):
                raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Replicate returned a "
                                                                  "malformed prediction"))
    except UpstreamError as exc:
        if exc.failure.kind is Kind.TIMEOUT and prediction.get("status") not in TERMINAL:
            url = _prediction_url(prediction, "cancel", route)
            yield UpstreamCall("POST", url, bearer(url, route, key), kind="cancel")
        raise
    return prediction


def outputs(prediction: Mapping[str, Any]) -> list[str]:
    """Output is one URI (the Nano Banana family) or a list of them (other image models)."""
    output = prediction.get("output")
    items = output if isinstance(output, list) else [output]
    return [str(item) for item in items if isinstance(item, str) and item]


def collect(prediction: Mapping[str, Any], request: ImageRequest, options: Options) -> Flow:
    """The images of a finished prediction, data URIs as given and URLs downloaded now."""
    if prediction.get("status") != "succeeded":
        raise UpstreamError(classify_prediction(prediction, options.block_markers))
    found = outputs(prediction)
    if not found:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Replicate prediction succeeded "
                                                          "without output"))
    images = []
    for item in found[: request.n]:
        images.append((yield from result_image(item)))
    return ImageResult(images=tuple(images), upstream_id=str(prediction.get("id")))


def flow(request: ImageRequest, route: Route) -> Flow:
    """Create the prediction, wait for it (polling if needed), then collect its images."""
    key = api_key(route)
    options = Options.of(route)
    reply = check((yield build(request, route, key, options)), classify)
    prediction = reply.json()
    if not isinstance(prediction, dict) or "id" not in prediction:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Replicate returned no prediction"))
    prediction = yield from wait_done(prediction, route, key, options)
    return (yield from collect(prediction, request, options))


# Nano Banana on Replicate returns one image per prediction: n > 1 runs n predictions.
ADAPTER = Adapter("replicate", flow, images_per_call=1, takes_callback=always,
                  verify_callback=webhooks.verify)
