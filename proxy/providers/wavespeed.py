"""The `wavespeed` protocol: WaveSpeed AI's v3 predictions: submit, poll the result, download.

Every answer is an envelope `{"code", "message", "data"}`, and a prediction that failed still
comes back as HTTP 200 with `data.status` "failed": the payload decides, not the status. One
prediction makes one image. Outputs are downloaded here, and only from the provider's allowed
hosts. Paths, field names, state names, resolution tokens and error codes are options, since
few of them were confirmed against the live API. `verify_webhook` checks WaveSpeed's signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Generator, Mapping
from functools import partial
from typing import Any
from urllib.parse import quote

from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import (
    Failure,
    Kind,
    UpstreamError,
    from_status,
    from_text,
    refusal,
    retry_after,
)
from proxy.providers.base import Adapter, Flow, Step, UpstreamCall, UpstreamReply, always, check
from proxy.providers.images_api import json_object, match_kind, peek
from proxy.providers.results import json_or_none, result_image, safe_text
from proxy.providers.upstream import (
    api_key,
    bearer,
    keyless,
    mask_refused,
    pauses,
    reference,
    renamed,
    shape_values,
)
from proxy.providers.wavespeed_options import Options, validate

SIGNATURE_VERSION = "v3"

__all__ = ["ADAPTER", "Options", "flow", "validate", "verify_webhook"]

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]
Uploads = Generator[Step, UpstreamReply | None, list[str]]


def model_input(request: ImageRequest, references: list[str], options: Options
                ) -> dict[str, Any]:
    """The submit body: the request in the model's own vocabulary."""
    tier = request.geometry.tier  # a tier the route does not list goes lower-cased ("2k")
    values = shape_values(request, {tier: options.resolutions.get(tier, tier.lower())},
                          options.output_formats, options.edit_aspect_ratio or None)
    values["images"] = references or None
    return renamed(values, options.fields, options.extra_input)


def upload_references(request: ImageRequest, route: Route, key: str, options: Options
                      ) -> Uploads:
    """Reference images as URLs WaveSpeed can read: URLs as given, bytes uploaded first
    (WaveSpeed's media upload) or, with `inline_images`, sent as data URIs."""
    if request.mask is not None:
        raise mask_refused()
    urls: list[str] = []
    for number, image in enumerate(request.images, 1):
        if image.url or options.inline_images:
            urls.append(reference(image))
            continue
        name = f"reference-{number}.{image.mime.removeprefix('image/')}"
        url = route.provider.base_url + options.upload_path
        call = UpstreamCall("POST", url, headers=bearer(url, route, key),
                            files=(("file", (name, image.data or b"", image.mime)),))
        data = _data(check((yield call), partial(classify, options=options)), "upload")
        stored = data.get("download_url") or data.get("url")
        if not isinstance(stored, str) or not stored:
            raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "WaveSpeed upload returned "
                                                              "no URL"))
        urls.append(stored)
    return urls


def build(request: ImageRequest, route: Route, key: str, options: Options,
          references: list[str]) -> UpstreamCall:
    """The submit: the model's text-to-image path, or its edit path when images are given."""
    path = options.edit_path if references else options.submit_path
    url = route.provider.base_url + path.replace("{model}", route.upstream_model)
    headers = bearer(url, route, key)
    if hook := route.options.get("callback_url"):
        url += f"?webhook={quote(str(hook), safe='')}"
    return UpstreamCall("POST", url, headers=headers,
                        json=model_input(request, references, options))


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """An error status, or an error `code` in a 2xx envelope, as a failure; else None."""
    body = json_or_none(reply)
    code = body.get("code") if isinstance(body, dict) else None
    status = reply.status
    if 200 <= status < 300:
        # A prediction in `data` speaks for itself (a failed one is read from its state).
        if not isinstance(code, int) or 200 <= code < 300 or isinstance(body.get("data"), dict):
            return None
        status = code  # refused inside a successful HTTP reply
    text = _message(body) or safe_text(reply.body.decode("utf-8", "replace")) or "no detail"
    lowered = text.lower()
    if not 100 <= status < 600:  # WaveSpeed's own code (error-codes page), not an HTTP one
        kind = match_kind(options.error_kinds, str(status)) or Kind.UPSTREAM_BROKEN
        return Failure(kind, f"WaveSpeed error (code {status}): {text}", None, reply.status)
    if status == 429:
        return Failure(Kind.RATE_LIMITED, f"WaveSpeed rate limit reached: {text}",
                       retry_after(reply.headers), status)
    # Auth refusals never quote the upstream: its text may echo the key.
    if any(m in lowered for m in options.topup_markers):
        return Failure(Kind.AUTH, "WaveSpeed account needs a top-up (the key is inactive or "
                                  "the balance is spent)", None, status)
    if status in (401, 402, 403):
        return Failure(Kind.AUTH, f"WaveSpeed refused the API key (HTTP {status})", None,
                       status)
    if status == 404:
        return Failure(Kind.UPSTREAM_BROKEN, f"WaveSpeed has no such model or prediction: "
                                             f"{text}", None, status)
    if 400 <= status < 500 and status != 408:
        if refusal(text, options.block_markers):
            return Failure(Kind.CONTENT_BLOCKED, f"WaveSpeed refused the content: {text}",
                           None, status)
        return Failure(Kind.BAD_REQUEST, f"WaveSpeed rejected the input: {text}", None, status)
    generic = from_status(status if status >= 400 else 500, reply.headers)
    return Failure(generic.kind, f"WaveSpeed error (HTTP {status}): {text}",
                   generic.retry_after_s, status)


def prediction_failure(data: Mapping[str, Any], options: Options) -> Failure:
    """A prediction that ended without output: its `data.code` first, then its error text
    (an outage before a refusal: "safety checker unavailable" is WaveSpeed's trouble)."""
    text = safe_text(data.get("error") or f"prediction {data.get('status')}")
    code = data.get("code")
    kind = match_kind(options.error_kinds, str(code) if code not in (None, "", 0) else None)
    if kind in (None, Kind.UPSTREAM_BROKEN):
        kind = from_text(text, options.block_markers) or kind
    if kind is Kind.CONTENT_BLOCKED:
        return Failure(kind, f"WaveSpeed refused the content: {text}")
    return Failure(kind or Kind.UPSTREAM_BROKEN, f"WaveSpeed prediction failed: {text}")


def wait_done(data: dict[str, Any], route: Route, key: str, options: Options) -> Poll:
    """Poll the prediction's result until it reaches a terminal state or the route's max wait.
    WaveSpeed documents no cancel: a prediction given up on may still finish (and bill)."""
    waits = pauses(options, "WaveSpeed prediction unfinished")
    url = _result_url(data, route, options)
    headers = bearer(url, route, key)  # no key to a urls.get on another host
    while data.get("status") not in options.terminal:
        yield next(waits)
        reply = check((yield UpstreamCall("GET", url, headers, kind="poll")),
                      partial(classify, options=options))
        data = _data(reply, "result")
    return data


def collect(data: Mapping[str, Any], request: ImageRequest, options: Options) -> Flow:
    """The images of a finished prediction, without those flagged NSFW: data URIs and bare
    base64 as given, URLs downloaded now (the driver checks their host; no key goes there)."""
    if data.get("status") not in options.completed_states:
        raise UpstreamError(prediction_failure(data, options))
    outputs = [o for o in data.get("outputs") or [] if isinstance(o, str) and o]
    flags = data.get("has_nsfw_contents") or []
    kept = [o for i, o in enumerate(outputs) if not (i < len(flags) and flags[i] is True)]
    if not kept:
        if outputs:
            raise UpstreamError(Failure(Kind.CONTENT_BLOCKED, "WaveSpeed refused the content: "
                                                              "output flagged as NSFW"))
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "WaveSpeed prediction completed "
                                                          "without output"))
    images = []
    for item in kept[: request.n]:
        if item.startswith(("data:", "https://", "http://")):
            images.append((yield from result_image(item)))
        else:
            images.append(_from_base64(item))
    return ImageResult(images=tuple(images), upstream_id=str(data.get("id")))


def flow(request: ImageRequest, route: Route) -> Flow:
    """One attempt; a failure whose text quotes the key (a failed prediction's `error` may
    echo it) has it cut out before it leaves the adapter."""
    key = api_key(route)
    return (yield from keyless(attempt(request, route, key), key))


def attempt(request: ImageRequest, route: Route, key: str) -> Flow:
    """Upload references if any, submit, poll to a terminal state, then collect the image."""
    options = Options.of(route)
    references = yield from upload_references(request, route, key, options)
    reply = check((yield build(request, route, key, options, references)),
                  partial(classify, options=options))
    data = _data(reply, "submit")
    if not data.get("id"):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "WaveSpeed returned no prediction "
                                                          "id"))
    data = yield from wait_done(data, route, key, options)
    return (yield from collect(data, request, options))


def verify_webhook(headers: Mapping[str, str], body: bytes, secret: str, now: float,
                   tolerance_s: float = 300) -> bool:
    """True only for a genuine, fresh WaveSpeed webhook: `webhook-signature` holds `v3,<hex>`,
    the HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{raw body}" keyed with the secret
    minus its `whsec_` prefix, used as text (not base64-decoded as Standard Webhooks do), and
    `webhook-timestamp` is within `tolerance_s` of `now` (older ones are replays)."""
    found = {name.lower(): value for name, value in headers.items()}
    webhook_id, stamp = found.get("webhook-id", ""), found.get("webhook-timestamp", "")
    key = secret.removeprefix("whsec_").encode()
    if not (webhook_id and stamp.isdigit() and key):
        return False
    if abs(now - int(stamp)) > tolerance_s:
        return False
    signed = f"{webhook_id}.{stamp}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).hexdigest().encode()
    for candidate in found.get("webhook-signature", "").split():
        version, _, value = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(
                value.lower().encode("utf-8", "replace"), expected):
            return True
    return False


def _result_url(data: Mapping[str, Any], route: Route, options: Options) -> str:
    urls = data.get("urls")
    if options.follow_urls_get and isinstance(urls, dict) and urls.get("get"):
        return str(urls["get"])
    return route.provider.base_url + options.result_path.replace("{id}", str(data["id"]))


def _data(reply: UpstreamReply, what: str) -> dict[str, Any]:
    """The envelope's `data` object; anything else is WaveSpeed's breakage."""
    data = json_object(reply).get("data")
    if not isinstance(data, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, f"WaveSpeed returned a malformed "
                                                          f"{what}", None, reply.status))
    return data


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    data = body.get("data")
    error = data.get("error") if isinstance(data, dict) else None
    return safe_text(body.get("message") or error or body.get("error") or body.get("detail")
                     or "")


def _from_base64(b64: str) -> Image:
    """Bare base64 (`enable_base64_output`): mime from the decoded header, text untouched."""
    mime, _ = peek(b64)
    if mime is None:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "WaveSpeed output is neither a URL "
                                                          "nor a base64 image"))
    return Image(mime=mime, b64=b64)


# WaveSpeed's Nano Banana endpoints take no image count: n > 1 runs n predictions.
ADAPTER = Adapter("wavespeed", flow, images_per_call=1, validate=validate,
                  takes_callback=always, verify_callback=verify_webhook)
