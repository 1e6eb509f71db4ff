"""The `segmind` protocol: Segmind's v2 queue (submit, poll status_url, fetch response_url),
or its v1 synchronous call, chosen per route (`api`, default v2).

The key goes in `x-api-key`, and only to Segmind's own API host. v2 results are kept for an
hour, so result files are downloaded here before the client is answered. A FAILED job comes
back under HTTP 422 with its state in the body, and is classified by its error text (an outage
before a refusal: proxy.failures.from_text). Segmind documents no cancel call, so a job that
outlives the deadline is left to finish (a failed job is not billed). Whatever its docs leave
open (paths, state names, where the result's images are, whether v1 answers with bytes or
JSON, the rate-limit reset header) is a route option.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
from collections.abc import Generator, Mapping
from typing import Any

from proxy import imaging
from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import (
    MAX_RETRY_AFTER_S,
    Failure,
    Kind,
    UpstreamError,
    from_status,
    from_text,
    mentions,
    refusal,
    retry_after,
)
from proxy.providers.base import Adapter, Flow, Step, UpstreamCall, UpstreamReply, check
from proxy.providers.results import from_download, json_or_none, result_image, safe_text
from proxy.providers.segmind_options import Options
from proxy.providers.upstream import (
    api_key,
    auth_for,
    keyless,
    mask_refused,
    pauses,
    reference,
    renamed,
    shape_values,
)

TIMEOUT_MARKERS = ("timed out", "timeout")

__all__ = ["ADAPTER", "Options", "flow", "reset_after"]

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]


def model_input(request: ImageRequest, options: Options) -> dict[str, Any]:
    """The model's body: the request in its own vocabulary (one image per call)."""
    if request.mask is not None:
        raise mask_refused()
    values = shape_values(request, options.resolutions, options.output_formats,
                          options.edit_aspect_ratio or None)
    if request.images:
        values["images"] = [reference(image, options.inline_images) for image in request.images]
    return renamed(values, options.fields, options.extra_input)


def build(request: ImageRequest, route: Route, key: str, options: Options) -> UpstreamCall:
    """The v2 submit or the v1 call: the model's slug in the route's path."""
    path = options.v1_path if options.api == "v1" else options.v2_path
    url = route.provider.base_url + path.replace("{model}", route.upstream_model)
    return UpstreamCall("POST", url, headers={"x-api-key": key},
                        json=model_input(request, options))


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """An HTTP error (`{"error": "…"}`, HTML for a 405) as a failure; None for 2xx."""
    if 200 <= reply.status < 300:
        return None
    status, text = reply.status, _error_text(reply)
    if 400 <= status < 500 and refusal(text, options.block_markers):
        return Failure(Kind.CONTENT_BLOCKED, f"Segmind refused the content: {text}", None, status)
    if status == 429:
        after = retry_after(reply.headers) or reset_after(reply.headers, options.reset_header)
        return Failure(Kind.RATE_LIMITED, "Segmind rate limit reached", after, status)
    if status in (401, 403):
        return Failure(Kind.AUTH, f"Segmind refused the API key: {text}", None, status)
    if status == 402 or (status == 406 and mentions(text, options.credit_markers)):
        return Failure(Kind.AUTH, f"Segmind account cannot pay: {text}", None, status)
    if status in (404, 410):
        return Failure(Kind.UPSTREAM_BROKEN, f"Segmind has no such model or request "
                                             f"(HTTP {status}): {text}", None, status)
    if status in (400, 406, 413, 422):
        return Failure(Kind.BAD_REQUEST, f"Segmind rejected the input: {text}", None, status)
    generic = from_status(status, reply.headers)
    return Failure(generic.kind, f"Segmind error (HTTP {status}): {text}",
                   generic.retry_after_s, status)


def _error_text(reply: UpstreamReply) -> str:
    body = json_or_none(reply)
    if isinstance(body, dict):
        found = body.get("error_description") or body.get("error") or body.get("message")
        return safe_text(found or "no detail")
    return safe_text(reply.body.decode("utf-8", "replace") or "no detail")


def reset_after(headers: Mapping[str, str], name: str, now: float | None = None
                ) -> float | None:
    """Seconds until the reset time a header names, as epoch seconds or ISO 8601 (its format
    is [U]; a time without a zone is UTC, as the header's name says)."""
    value = headers.get(name) if name else None
    try:
        when = float(value or "")
    except ValueError:
        try:
            moment = dt.datetime.fromisoformat(value or "")
        except ValueError:
            return None
        when = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
    seconds = when - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def _state(body: Mapping[str, Any], options: Options) -> str:
    """pending, completed or failed; a state the route does not name is waited on."""
    return options.states.get(str(body.get("status")), "pending")


def _job(reply: UpstreamReply | None, what: str, options: Options) -> dict[str, Any]:
    """A status or result body. A finished job's body counts whatever the HTTP status (FAILED
    comes under 422); any other error is classified, and a body that is no object is broken."""
    body = json_or_none(reply) if reply is not None else None
    if not (isinstance(body, dict) and _state(body, options) != "pending"):
        check(reply, lambda r: classify(r, options))
    if not isinstance(body, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, f"Segmind returned a malformed {what}"))
    return body


def job_failure(body: Mapping[str, Any], options: Options) -> Failure:
    """A FAILED job, by its error text (Segmind gives no code): Segmind's outage, refused
    content, slow, bad input, or broken."""
    text = safe_text(body.get("error") or f"request {body.get('status')}")
    kind = from_text(text, options.block_markers)
    if kind is Kind.OVERLOADED:
        return Failure(kind, f"Segmind is unavailable: {text}")
    if kind is Kind.CONTENT_BLOCKED:
        return Failure(kind, f"Segmind refused the content: {text}")
    if mentions(text, TIMEOUT_MARKERS):
        return Failure(Kind.TIMEOUT, f"Segmind request timed out: {text}")
    if mentions(text, options.invalid_markers):
        return Failure(Kind.BAD_REQUEST, f"Segmind rejected the input: {text}")
    return Failure(Kind.UPSTREAM_BROKEN, f"Segmind request failed: {text}")


def _auth(url: str, route: Route, key: str) -> dict[str, str]:
    return auth_for(url, route, "x-api-key", key)


def wait_done(submitted: dict[str, Any], route: Route, key: str, options: Options) -> Poll:
    """Poll the status URL until the job is finished, within the route's max wait."""
    waits = pauses(options, "Segmind request unfinished")
    status = submitted
    while _state(status, options) == "pending":
        yield next(waits)
        url = str(submitted["status_url"])
        status = _job((yield UpstreamCall("GET", url, _auth(url, route, key), kind="poll")),
                      "status", options)
    return status


def _decoded(text: str) -> Image | None:
    """Bare base64 image text as an Image (its kind from the decoded head), else None."""
    head = text[:64]
    try:
        kind = imaging.sniff(base64.b64decode(head[: len(head) - len(head) % 4], validate=True))
    except (binascii.Error, ValueError):
        return None
    return Image(mime=f"image/{kind}", b64=text) if kind else None


def result_items(body: Mapping[str, Any], options: Options) -> list[str]:
    """The strings of the first result field that has any: URLs, data URIs, base64, text.
    A field holds one string, an object with a `url`, or a list of either."""
    for name in options.result_fields:
        value = body.get(name)
        items = value if isinstance(value, list) else [value]
        found = [i.get("url") if isinstance(i, dict) else i for i in items]
        if strings := [str(i) for i in found if isinstance(i, str) and i]:
            return strings
    return []


def collect(body: Mapping[str, Any], upstream_id: str | None, request: ImageRequest,
            options: Options) -> Flow:
    """The images of a finished body: data URIs and base64 as given, URLs downloaded now."""
    if _state(body, options) == "failed":
        raise UpstreamError(job_failure(body, options))
    images: list[Image] = []
    text: list[str] = []
    for item in result_items(body, options):
        if len(images) == request.n:
            break
        if item.startswith(("data:", "https://", "http://")):
            images.append((yield from result_image(item)))
        elif (image := _decoded(item)) is not None:
            images.append(image)
        else:
            text.append(item)
    if not images:
        note = safe_text(" ".join(text))
        if refusal(note, options.block_markers):
            raise UpstreamError(Failure(Kind.CONTENT_BLOCKED, f"Segmind refused the content: "
                                                              f"{note}"))
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Segmind finished without an image"))
    return ImageResult(images=tuple(images), upstream_id=upstream_id)


def run_sync(request: ImageRequest, route: Route, key: str, options: Options) -> Flow:
    """v1: one call whose answer is the image itself, or a JSON body naming it."""
    reply = check((yield build(request, route, key, options)), lambda r: classify(r, options))
    upstream_id = reply.headers.get("x-request-id")
    declared = reply.headers.get("content-type", "").lower()
    raw = options.v1_response == "image" or (options.v1_response == "auto" and (
        declared.startswith("image/") or imaging.sniff(reply.body) is not None))
    if raw:
        return ImageResult(images=(from_download(reply),), upstream_id=upstream_id)
    body = _job(reply, "result", options)
    return (yield from collect(body, upstream_id, request, options))


def flow(request: ImageRequest, route: Route) -> Flow:
    """One attempt; a failure whose upstream text quotes the key has it cut out."""
    key = api_key(route)
    return (yield from keyless(attempt(request, route, key), key))


def attempt(request: ImageRequest, route: Route, key: str) -> Flow:
    """v2: submit, poll to a finished state, fetch the result, then its images. v1: one call."""
    options = Options.of(route)
    if options.api == "v1":
        return (yield from run_sync(request, route, key, options))
    submitted = _job((yield build(request, route, key, options)), "submit", options)
    if _state(submitted, options) == "failed":
        raise UpstreamError(job_failure(submitted, options))
    if not all(submitted.get(name) for name in ("request_id", "status_url", "response_url")):
        # As Segmind's own SDK does: its contract is all three, so never poll a guessed URL.
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Segmind's submit reply lacks its "
                                                          "request id or queue URLs"))
    status = yield from wait_done(submitted, route, key, options)
    if _state(status, options) == "failed":
        raise UpstreamError(job_failure(status, options))
    url = str(submitted["response_url"])
    result = _job((yield UpstreamCall("GET", url, _auth(url, route, key), kind="fetch")),
                  "result", options)
    return (yield from collect(result, str(submitted["request_id"]), request, options))


# Segmind's Nano Banana models take no image count: n > 1 runs n jobs.
ADAPTER = Adapter("segmind", flow, images_per_call=1)
