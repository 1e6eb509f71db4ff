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
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any
from urllib.parse import quote

from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError, from_status, retry_after
from proxy.providers.base import (
    Adapter,
    Flow,
    Sleep,
    Step,
    UpstreamCall,
    UpstreamReply,
    always,
    check,
)

# Shared with the other protocols; `_auth` (replicate) and `_json_or_none` (fal) are private
# there, used as they are until a common module holds the submit-and-poll helpers.
from proxy.providers.fal import _json_or_none
from proxy.providers.images_api import error_kinds, json_object, match_kind, peek
from proxy.providers.replicate import (
    _auth,
    api_key,
    classify_download,
    data_uri,
    from_data_uri,
    from_download,
    safe_text,
)

FIELDS = {"prompt": "prompt", "images": "images", "aspect_ratio": "aspect_ratio",
          "resolution": "resolution", "output_format": "output_format", "seed": ""}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "webp": "png"}  # webp: converted by us
RESOLUTIONS = {"0.5K": "0.5k", "1K": "1k", "2K": "2k", "4K": "4k"}  # 0.5k is [U]
BLOCK_MARKERS = ("sensitive", "nsfw", "content policy", "moderation", "safety")
# Words of an auth-style refusal that only a top-up cures (keys stay inert until then).
TOPUP_MARKERS = ("top up", "top-up", "topup", "insufficient balance", "insufficient credit")
# `data.code` of a failed prediction (wavespeed.ai/docs/error-codes); `error_kinds` overrides.
ERROR_KINDS = {"1200": Kind.CONTENT_BLOCKED, "1400": Kind.BAD_REQUEST,
               "1401": Kind.BAD_REQUEST, "1402": Kind.BAD_REQUEST,
               "5003": Kind.OVERLOADED, "5004": Kind.TIMEOUT}
SIGNATURE_VERSION = "v3"

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]
Uploads = Generator[Step, UpstreamReply | None, list[str]]


@dataclass(frozen=True, slots=True)
class Options:
    """How to talk to one route: read from the provider's options, then the route's."""

    poll_interval_s: float = 1.0
    poll_interval_max_s: float = 5.0
    poll_backoff: float = 1.5
    max_wait_s: float = 300.0
    submit_path: str = "/{model}/text-to-image"  # {model}: the route's upstream_model
    edit_path: str = "/{model}/edit"  # used when reference images are given
    result_path: str = "/predictions/{id}/result"
    follow_urls_get: bool = False  # poll data.urls.get instead of result_path
    upload_path: str = "/media/upload/binary"
    inline_images: bool = False  # uploaded bytes as data URIs instead of uploading them first
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=lambda: RESOLUTIONS)
    edit_aspect_ratio: str = ""  # "": an edit with no size asked leaves it out (keeps input's)
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    completed_states: tuple[str, ...] = ("completed",)
    failed_states: tuple[str, ...] = ("failed",)
    block_markers: tuple[str, ...] = BLOCK_MARKERS
    topup_markers: tuple[str, ...] = TOPUP_MARKERS
    error_kinds: Mapping[str, Kind] = field(default_factory=lambda: ERROR_KINDS)

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        text = {name: str(given[name]) for name in (
            "submit_path", "edit_path", "result_path", "upload_path", "edit_aspect_ratio")
            if name in given}
        return cls(
            poll_interval_s=float(given.get("poll_interval_s", 1.0)),
            poll_interval_max_s=float(given.get("poll_interval_max_s", 5.0)),
            poll_backoff=float(given.get("poll_backoff", 1.5)),
            max_wait_s=float(given.get("max_wait_s", 300.0)),
            follow_urls_get=bool(given.get("follow_urls_get")),
            inline_images=bool(given.get("inline_images")),
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions={**RESOLUTIONS, **given.get("resolutions", {})},
            extra_input=dict(given.get("extra_input", {})),
            completed_states=tuple(given.get("completed_states", ("completed",))),
            failed_states=tuple(given.get("failed_states", ("failed",))),
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
            topup_markers=tuple(given.get("topup_markers", TOPUP_MARKERS)),
            error_kinds=error_kinds(route, ERROR_KINDS), **text)

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(self.completed_states + self.failed_states)


KNOWN = {f.name for f in fields(Options)} - {"block_markers"} | {"content_block_markers",
                                                                  "token_command"}


def validate(options: Mapping[str, Any]) -> list[str]:
    """Problems with a route's merged options, found when the catalog loads rather than as
    a failed request: misspelt names, unknown failure kinds, unusable paths and states."""
    problems = [f"options.{name}: unknown option" for name in options if name not in KNOWN]
    kinds = sorted(kind.value for kind in Kind)
    problems += [f"options.error_kinds.{code}: {kind!r} is not one of {', '.join(kinds)}"
                 for code, kind in dict(options.get("error_kinds", {})).items()
                 if kind not in kinds]
    if "{id}" not in str(options.get("result_path", "{id}")):
        problems.append("options.result_path: must contain {id}")
    problems += [f"options.{name}: must be a non-empty list of state names"
                 for name in ("completed_states", "failed_states")
                 if name in options and not (isinstance(options[name], list) and options[name])]
    return problems


def model_input(request: ImageRequest, references: list[str], options: Options
                ) -> dict[str, Any]:
    """The submit body: the request in the model's own vocabulary."""
    tier = request.geometry.tier
    values: dict[str, Any] = {
        "prompt": request.prompt, "seed": request.seed,
        "aspect_ratio": request.geometry.aspect_ratio,
        "resolution": options.resolutions.get(tier, tier.lower()),
        "output_format": options.output_formats.get(request.output_format),
        "images": references or None,
    }
    if request.kind == "edit" and request.geometry.source == "default":
        values["aspect_ratio"] = options.edit_aspect_ratio or None
    built = dict(options.extra_input)
    built.update({options.fields[k]: v for k, v in values.items()
                  if options.fields.get(k) and v is not None})
    return built


def upload_references(request: ImageRequest, route: Route, key: str, options: Options
                      ) -> Uploads:
    """Reference images as URLs WaveSpeed can read: URLs as given, bytes uploaded first
    (WaveSpeed's media upload) or, with `inline_images`, sent as data URIs."""
    if request.mask is not None:
        raise UpstreamError(Failure(Kind.BAD_REQUEST, "this model cannot apply a 'mask'; "
                                                      "describe the edit in the prompt instead"))
    urls: list[str] = []
    for number, image in enumerate(request.images, 1):
        if image.url or options.inline_images:
            urls.append(image.url or data_uri(image.mime, image.data or b""))
            continue
        name = f"reference-{number}.{image.mime.removeprefix('image/')}"
        url = route.provider.base_url + options.upload_path
        call = UpstreamCall("POST", url, headers=_auth(url, route, key),
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
    headers = _auth(url, route, key)
    if hook := route.options.get("callback_url"):
        url += f"?webhook={quote(str(hook), safe='')}"
    return UpstreamCall("POST", url, headers=headers,
                        json=model_input(request, references, options))


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """An error status, or an error `code` in a 2xx envelope, as a failure; else None."""
    body = _json_or_none(reply)
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
        if any(m in lowered for m in options.block_markers):
            return Failure(Kind.CONTENT_BLOCKED, f"WaveSpeed refused the content: {text}",
                           None, status)
        return Failure(Kind.BAD_REQUEST, f"WaveSpeed rejected the input: {text}", None, status)
    generic = from_status(status if status >= 400 else 500, reply.headers)
    return Failure(generic.kind, f"WaveSpeed error (HTTP {status}): {text}",
                   generic.retry_after_s, status)


def prediction_failure(data: Mapping[str, Any], options: Options) -> Failure:
    """A prediction that ended without output: its `data.code` first, then its error text."""
    text = safe_text(data.get("error") or f"prediction {data.get('status')}")
    code = data.get("code")
    kind = match_kind(options.error_kinds, str(code) if code not in (None, "", 0) else None)
    if kind in (None, Kind.UPSTREAM_BROKEN) and any(
            m.lower() in text.lower() for m in options.block_markers):
        kind = Kind.CONTENT_BLOCKED
    if kind is Kind.CONTENT_BLOCKED:
        return Failure(kind, f"WaveSpeed refused the content: {text}")
    return Failure(kind or Kind.UPSTREAM_BROKEN, f"WaveSpeed prediction failed: {text}")


def wait_done(data: dict[str, Any], route: Route, key: str, options: Options) -> Poll:
    """Poll the prediction's result until it reaches a terminal state or the route's max wait.
    WaveSpeed documents no cancel: a prediction given up on may still finish (and bill)."""
    started = time.monotonic()
    interval = options.poll_interval_s
    url = _result_url(data, route, options)
    headers = _auth(url, route, key)  # no key to a urls.get on another host
    while data.get("status") not in options.terminal:
        if time.monotonic() - started + interval > options.max_wait_s:
            raise UpstreamError(Failure(Kind.TIMEOUT, f"WaveSpeed prediction unfinished "
                                                      f"after {options.max_wait_s:g} s"))
        yield Sleep(interval)
        interval = min(interval * options.poll_backoff, options.poll_interval_max_s)
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
        if item.startswith("data:"):
            images.append(from_data_uri(item))
        elif item.startswith(("https://", "http://")):
            reply = check((yield UpstreamCall("GET", item, kind="fetch")), classify_download)
            images.append(from_download(reply))
        else:
            images.append(_from_base64(item))
    return ImageResult(images=tuple(images), upstream_id=str(data.get("id")))


def flow(request: ImageRequest, route: Route) -> Flow:
    """Upload references if any, submit, poll to a terminal state, then collect the image."""
    key = api_key(route)
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
