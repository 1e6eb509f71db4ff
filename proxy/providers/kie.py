"""The `kie` protocol: Kie.ai's market jobs: createTask, poll recordInfo, download the result.

Kie answers with its own `code` envelope, often inside HTTP 200, so a reply is judged by that
code and by its HTTP status. A finished record carries its result URLs inside `resultJson`, a
JSON *string*; the files sit on Kie's temporary hosts and are downloaded here. Kie takes
reference images as URLs only, so uploaded bytes go to its file-upload API first. Kie has no
cancel call: a task past the wait just times out. Field names, state values, codes and pacing
are route data (routes `options`), because Kie's schemas differ per model and change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlencode

import orjson

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult, InputImage
from proxy.failures import RETRYABLE, Failure, Kind, UpstreamError, from_status, retry_after
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

# Shared helpers; `_json_or_none` is private to fal and borrowed until a common module exists.
from proxy.providers.fal import _json_or_none
from proxy.providers.replicate import (
    api_key,
    classify_download,
    data_uri,
    from_download,
    safe_text,
)

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
# Input field names of nano-banana-2 / nano-banana-pro [C]; google/nano-banana renames some.
FIELDS = {"prompt": "prompt", "images": "image_input", "aspect_ratio": "aspect_ratio",
          "resolution": "resolution", "output_format": "output_format", "seed": ""}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "png"}  # webp is converted here
# The task record's field names [S: client code and a reseller's copy of the docs].
RECORD = {"state": "state", "result": "resultJson", "urls": "resultUrls",
          "fail_code": "failCode", "fail_msg": "failMsg"}
UPLOAD = {"data": "base64Data", "path": "uploadPath", "url": "downloadUrl"}  # [S] docs mirror
UPLOAD_URL = "https://kieai.redpandaai.co/api/file-base64-upload"
PENDING = ("waiting", "queuing", "generating")
SUCCESS = ("success",)
FAILED = ("fail", "failed")  # "fail" [C]; some clients also see "failed" [S]
# Kie's envelope codes [C]; 402 is "insufficient credits", 455 maintenance, 505 "disabled".
CODES = {401: Kind.AUTH, 402: Kind.AUTH, 404: Kind.UPSTREAM_BROKEN, 422: Kind.BAD_REQUEST,
         429: Kind.RATE_LIMITED, 455: Kind.OVERLOADED, 500: Kind.UPSTREAM_BROKEN,
         501: Kind.UPSTREAM_BROKEN, 505: Kind.UPSTREAM_BROKEN}
POLL_RETRY_CODES = (429, 455, 500)  # inside a poll's HTTP 200: "ask again", not "failed"
BLOCK_MARKERS = ("nsfw", "content policy", "sensitive", "safety", "prohibited")
# Kie's file host refuses some default client agents with 403 [S]; curl-like agents pass.
USER_AGENT = "Mozilla/5.0 (compatible; Switchyard)"

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]
Classify = Callable[[UpstreamReply], Failure | None]


@dataclass(frozen=True, slots=True)
class Options:
    """How to talk to one route: read from the provider's options, then the route's."""

    poll_interval_s: float = 2.0
    poll_interval_max_s: float = 8.0
    poll_backoff: float = 1.5
    max_wait_s: float = 300.0
    edit_model: str = ""  # set: requests with reference images use this model id
    edit_aspect_ratio: str = "auto"  # an edit with no size asked keeps the input's shape
    callback_url: str = ""  # sent as callBackUrl; Switchyard still polls
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=dict)  # tier -> token, if not equal
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    record: Mapping[str, str] = field(default_factory=lambda: RECORD)
    upload: Mapping[str, str] = field(default_factory=lambda: UPLOAD)
    upload_url: str = UPLOAD_URL  # "": uploaded bytes are refused (URLs only)
    upload_path: str = "switchyard"
    inline_images: bool = False  # send uploaded bytes as data URIs instead of uploading them
    pending_states: tuple[str, ...] = PENDING
    success_states: tuple[str, ...] = SUCCESS
    failed_states: tuple[str, ...] = FAILED
    ok_codes: tuple[int, ...] = (200,)
    codes: Mapping[int, Kind] = field(default_factory=lambda: CODES)
    poll_retry_codes: tuple[int, ...] = POLL_RETRY_CODES
    fail_codes: Mapping[str, Kind] = field(default_factory=dict)  # failCode -> class [U]
    block_markers: tuple[str, ...] = BLOCK_MARKERS
    user_agent: str = USER_AGENT  # for result downloads; "" leaves httpx's own
    mask_as_reference: bool = False  # else a mask is refused: these models cannot apply one

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        simple = {f: type(getattr(cls(), f))(given[f]) for f in _SIMPLE if f in given}
        return cls(
            **simple,
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions=dict(given.get("resolutions", {})),
            extra_input=dict(given.get("extra_input", {})),
            record={**RECORD, **given.get("record_fields", {})},
            upload={**UPLOAD, **given.get("upload_fields", {})},
            pending_states=tuple(given.get("pending_states", PENDING)),
            success_states=tuple(given.get("success_states", SUCCESS)),
            failed_states=tuple(given.get("failed_states", FAILED)),
            ok_codes=tuple(int(c) for c in given.get("ok_codes", (200,))),
            codes={**CODES, **{int(c): Kind(k) for c, k in given.get("codes", {}).items()}},
            poll_retry_codes=tuple(int(c) for c in given.get("poll_retry_codes",
                                                              POLL_RETRY_CODES)),
            fail_codes={str(c): Kind(k) for c, k in given.get("fail_codes", {}).items()},
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
        )


# Scalar options read as given, converted to the type of their default.
_SIMPLE = ("poll_interval_s", "poll_interval_max_s", "poll_backoff", "max_wait_s",
           "edit_model", "edit_aspect_ratio", "callback_url", "upload_url", "upload_path",
           "inline_images", "user_agent", "mask_as_reference")
_LISTS = ("pending_states", "success_states", "failed_states", "ok_codes", "poll_retry_codes",
          "content_block_markers")
KNOWN = {*_SIMPLE, *_LISTS, "fields", "output_formats", "resolutions", "extra_input",
         "record_fields", "upload_fields", "codes", "fail_codes"}


def validate(options: Mapping[str, Any]) -> list[str]:
    """Problems in a route's merged options, found when the catalog loads rather than as a
    failed request: misspelt names, unknown failure classes, codes that are not numbers."""
    problems = [f"options.{name}: unknown option" for name in options if name not in KNOWN]
    kinds = sorted(kind.value for kind in Kind)
    for name in ("codes", "fail_codes"):
        for code, kind in dict(options.get(name, {})).items():
            if kind not in kinds:
                problems.append(f"options.{name}.{code}: {kind!r} is not one of "
                                f"{', '.join(kinds)}")
            if name == "codes" and not str(code).isdigit():
                problems.append(f"options.codes.{code}: not a numeric code")
    problems += [f"options.{name}: must be a list" for name in _LISTS
                 if name in options and not isinstance(options[name], list)]
    return problems


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """None for a success; else the failure Kie's envelope `code` names (it can say 4xx inside
    HTTP 200), or the HTTP status when the reply carries no code (a proxy's error page)."""
    body = _json_or_none(reply)
    code = _code(body)
    if 200 <= reply.status < 300 and (code is None or code in options.ok_codes):
        return None
    if code is None or code in options.ok_codes:
        code = reply.status
    text = _message(body) or safe_text(reply.body.decode("utf-8", "replace")) or "no detail"
    kind = options.codes.get(code) or (from_status(code, reply.headers).kind
                                       if 400 <= code < 600 else Kind.UPSTREAM_BROKEN)
    if kind in (Kind.BAD_REQUEST, Kind.UPSTREAM_BROKEN) and _blocked(text, options):
        kind = Kind.CONTENT_BLOCKED
    after = retry_after(reply.headers) if kind in RETRYABLE else None
    return Failure(kind, f"Kie answered code {code}: {text}", after, code)


def _code(body: Any) -> int | None:
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    return safe_text(body.get("msg") or body.get("message") or "")


def _blocked(text: str, options: Options) -> bool:
    return any(marker.lower() in text.lower() for marker in options.block_markers)


def _data(reply: UpstreamReply, what: str) -> dict[str, Any]:
    """The envelope's `data` object; anything else is Kie's breakage (it fails over)."""
    body = reply.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, f"Kie returned a malformed {what}",
                                    None, reply.status))
    return data


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def references(request: ImageRequest, key: str, options: Options,
               classified: Classify) -> Generator[Step, UpstreamReply | None, list[str]]:
    """Reference images as URLs Kie can fetch: URLs as given; bytes and data URIs uploaded to
    Kie's file API first (free, kept three days), or inlined when the route says so."""
    images = list(request.images)
    if request.mask is not None:
        if not options.mask_as_reference:
            raise UpstreamError(Failure(Kind.BAD_REQUEST, "this model cannot apply a 'mask'; "
                                        "describe the edit in the prompt instead"))
        images.append(request.mask)
    urls = []
    for image in images:
        if image.url and not image.url.startswith("data:"):
            urls.append(image.url)
        elif options.inline_images:
            urls.append(_as_data_uri(image))
        elif not options.upload_url:
            raise UpstreamError(Failure(Kind.BAD_REQUEST, "this route takes reference images "
                                                          "as https URLs only ('image')"))
        else:
            reply = check((yield upload_call(_as_data_uri(image), key, options)), classified)
            url = _data(reply, "upload reply").get(options.upload["url"])
            if not isinstance(url, str) or not url:
                raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Kie's upload returned no "
                                                                  "file URL"))
            urls.append(url)
    return urls


def _as_data_uri(image: InputImage) -> str:
    return image.url or data_uri(image.mime, image.data or b"")


def upload_call(uri: str, key: str, options: Options) -> UpstreamCall:
    """A base64 upload. Sent once like a submit: it starts no paid work, and a failed upload
    ends the attempt before any task exists."""
    body = {options.upload["data"]: uri, options.upload["path"]: options.upload_path}
    return UpstreamCall("POST", options.upload_url, headers=_bearer(key), json=body)


def task_input(request: ImageRequest, options: Options, urls: list[str]) -> dict[str, Any]:
    """The task's `input`: the request in the model's own vocabulary."""
    values: dict[str, Any] = {
        "prompt": request.prompt, "seed": request.seed,
        "aspect_ratio": request.geometry.aspect_ratio,
        "resolution": options.resolutions.get(request.geometry.tier, request.geometry.tier),
        "output_format": options.output_formats.get(request.output_format),
        "images": urls or None,
    }
    if request.kind == "edit" and request.geometry.source == "default":
        values["aspect_ratio"] = options.edit_aspect_ratio
    built = dict(options.extra_input)
    built.update({options.fields[k]: v for k, v in values.items()
                  if options.fields.get(k) and v is not None})
    return built


def build(request: ImageRequest, route: Route, key: str, options: Options,
          urls: list[str]) -> UpstreamCall:
    """The createTask call; an edit goes to the route's edit model when it names one."""
    model = options.edit_model if urls and options.edit_model else route.upstream_model
    body: dict[str, Any] = {"model": model, "input": task_input(request, options, urls)}
    if options.callback_url:
        body["callBackUrl"] = options.callback_url
    return UpstreamCall("POST", f"{route.provider.base_url}{CREATE_PATH}",
                        headers=_bearer(key), json=body)


def wait_done(task_id: str, route: Route, key: str, options: Options,
              classified: Classify) -> Poll:
    """Poll recordInfo until the task is no longer pending (an unknown state counts as pending).
    Transient codes inside a poll's HTTP 200 mean "ask again"; past the max wait it is a
    timeout (Kie has no cancel call, so the task is left to finish on its own)."""
    started = time.monotonic()
    interval = options.poll_interval_s
    url = f"{route.provider.base_url}{RECORD_PATH}?{urlencode({'taskId': task_id})}"
    record: dict[str, Any] = {}
    while record.get(options.record["state"]) not in (*options.success_states,
                                                      *options.failed_states):
        if time.monotonic() - started + interval > options.max_wait_s:
            raise UpstreamError(Failure(Kind.TIMEOUT, f"Kie task unfinished after "
                                                      f"{options.max_wait_s:g} s"))
        yield Sleep(interval)
        interval = min(interval * options.poll_backoff, options.poll_interval_max_s)
        reply = yield UpstreamCall("GET", url, _bearer(key), kind="poll")
        if reply is not None and 200 <= reply.status < 300 \
                and _code(_json_or_none(reply)) in options.poll_retry_codes:
            continue
        record = _data(check(reply, classified), "task record")
    return record


def record_failure(record: Mapping[str, Any], options: Options) -> Failure:
    """A task that ended in a failed state: refused content, or a failed run."""
    code = record.get(options.record["fail_code"])
    text = safe_text(record.get(options.record["fail_msg"])
                     or f"task ended {record.get(options.record['state'])}")
    kind = options.fail_codes.get(str(code), Kind.UPSTREAM_BROKEN)
    if kind is Kind.UPSTREAM_BROKEN and _blocked(text, options):
        kind = Kind.CONTENT_BLOCKED
    return Failure(kind, f"Kie task failed (failCode {code or 'none'}): {text}")


def result_urls(record: Mapping[str, Any], options: Options) -> list[str]:
    """The URLs inside `resultJson`, a JSON string (an object is taken as well)."""
    raw = record.get(options.record["result"])
    try:
        parsed = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        parsed = None
    urls = parsed.get(options.record["urls"]) if isinstance(parsed, dict) else None
    return [u for u in urls if isinstance(u, str) and u] if isinstance(urls, list) else []


def collect(record: Mapping[str, Any], task_id: str, request: ImageRequest,
            options: Options) -> Flow:
    """The images of a finished task, downloaded now (Kie's key never goes to its file host)."""
    if record.get(options.record["state"]) not in options.success_states:
        raise UpstreamError(record_failure(record, options))
    found = result_urls(record, options)
    if not found:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Kie task succeeded without "
                                                          "result URLs"))
    headers = {"User-Agent": options.user_agent} if options.user_agent else {}
    images = []
    for url in found[: request.n]:
        reply = check((yield UpstreamCall("GET", url, headers, kind="fetch")), classify_download)
        images.append(from_download(reply))
    return ImageResult(images=tuple(images), upstream_id=task_id)


def flow(request: ImageRequest, route: Route) -> Flow:
    """Upload references, create the task, poll it to an end state, then download its images."""
    key = api_key(route)
    options = Options.of(route)
    classified = partial(classify, options=options)
    urls = yield from references(request, key, options, classified)
    created = _data(check((yield build(request, route, key, options, urls)), classified),
                    "createTask reply")
    task_id = created.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Kie returned no task id"))
    record = yield from wait_done(task_id, route, key, options, classified)
    return (yield from collect(record, task_id, request, options))


def verify_webhook(headers: Mapping[str, str], body: bytes, secret: str, now: float,
                   tolerance_s: float = 300) -> bool:
    """True only for a callback signed with `secret` whose timestamp is within `tolerance_s`
    of `now` (epoch seconds); a missing, malformed, stale or future signature is False.

    Kie signs `taskId + "." + X-Webhook-Timestamp` with HMAC-SHA256, base64 in
    X-Webhook-Signature. The body is NOT signed: a verified callback proves only that Kie
    announced this task id at this time. Its state and result URLs must not be trusted: fetch
    the task again through recordInfo. A replay inside the window still verifies, so
    de-duplicate on (provider, task id).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    stamp = lowered.get("x-webhook-timestamp", "").strip()
    given = lowered.get("x-webhook-signature", "").strip()
    if not (secret and given and stamp.isascii() and stamp.isdigit()):
        return False
    if abs(now - int(stamp)) > tolerance_s:
        return False
    task_id = _callback_task_id(body)
    if task_id is None:
        return False
    digest = hmac.new(secret.encode(), f"{task_id}.{stamp}".encode(), hashlib.sha256).digest()
    return hmac.compare_digest(base64.b64encode(digest), given.encode())


def _callback_task_id(body: bytes) -> str | None:
    """The task id of a callback body: `data.taskId`, or `data.task_id` as Kie's own
    verification sample reads it."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, dict):
        return None
    task_id = data.get("taskId") or data.get("task_id")
    return task_id if isinstance(task_id, str) and task_id else None


# Kie's Nano Banana models return one image per task: n > 1 runs n tasks.
ADAPTER = Adapter("kie", flow, images_per_call=1, validate=validate, takes_callback=always,
                  verify_callback=verify_webhook)
