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
from collections.abc import Callable, Generator, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlencode

import orjson

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import (
    RETRYABLE,
    Failure,
    Kind,
    UpstreamError,
    from_status,
    from_text,
    refusal,
    retry_after,
)
from proxy.providers.base import Adapter, Flow, Step, UpstreamCall, UpstreamReply, always, check
from proxy.providers.kie_options import Options, validate
from proxy.providers.results import download, json_or_none, safe_text
from proxy.providers.upstream import (
    api_key,
    keyless,
    mask_refused,
    pauses,
    reference,
    renamed,
    shape_values,
)

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"

__all__ = ["ADAPTER", "Options", "flow", "validate", "verify_webhook"]

Poll = Generator[Step, UpstreamReply | None, dict[str, Any]]
Classify = Callable[[UpstreamReply], Failure | None]


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """None for a success; else the failure Kie's envelope `code` names (it can say 4xx inside
    HTTP 200), or the HTTP status when the reply carries no code (a proxy's error page). Its
    text can make a refusal only of a code that is not Kie's own trouble: a 500 is "server
    exception, retry later" whatever its text says."""
    body = json_or_none(reply)
    code = _code(body)
    if 200 <= reply.status < 300 and (code is None or code in options.ok_codes):
        return None
    if code is None or code in options.ok_codes:
        code = reply.status
    text = _message(body) or safe_text(reply.body.decode("utf-8", "replace")) or "no detail"
    kind = options.codes.get(code) or (from_status(code, reply.headers).kind
                                       if 400 <= code < 600 else Kind.UPSTREAM_BROKEN)
    if kind in (Kind.BAD_REQUEST, Kind.UPSTREAM_BROKEN) and not 500 <= code < 600 \
            and refusal(text, options.block_markers):
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
            raise mask_refused()
        images.append(request.mask)
    urls = []
    for image in images:
        if image.url and not image.url.startswith("data:"):
            urls.append(image.url)
        elif options.inline_images:
            urls.append(reference(image))
        elif not options.upload_url:
            raise UpstreamError(Failure(Kind.BAD_REQUEST, "this route takes reference images "
                                                          "as https URLs only ('image')"))
        else:
            reply = check((yield upload_call(reference(image), key, options)), classified)
            url = _data(reply, "upload reply").get(options.upload["url"])
            if not isinstance(url, str) or not url:
                raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Kie's upload returned no "
                                                                  "file URL"))
            urls.append(url)
    return urls


def upload_call(uri: str, key: str, options: Options) -> UpstreamCall:
    """A base64 upload. Sent once like a submit: it starts no paid work, and a failed upload
    ends the attempt before any task exists."""
    body = {options.upload["data"]: uri, options.upload["path"]: options.upload_path}
    return UpstreamCall("POST", options.upload_url, headers=_bearer(key), json=body)


def task_input(request: ImageRequest, options: Options, urls: list[str]) -> dict[str, Any]:
    """The task's `input`: the request in the model's own vocabulary."""
    values = shape_values(request, options.resolutions, options.output_formats,
                          options.edit_aspect_ratio)
    values["images"] = urls or None
    return renamed(values, options.fields, options.extra_input)


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
    waits = pauses(options, "Kie task unfinished")
    url = f"{route.provider.base_url}{RECORD_PATH}?{urlencode({'taskId': task_id})}"
    record: dict[str, Any] = {}
    while record.get(options.record["state"]) not in (*options.success_states,
                                                      *options.failed_states):
        yield next(waits)
        reply = yield UpstreamCall("GET", url, _bearer(key), kind="poll")
        if reply is not None and 200 <= reply.status < 300 \
                and _code(json_or_none(reply)) in options.poll_retry_codes:
            continue
        record = _data(check(reply, classified), "task record")
    return record


def record_failure(record: Mapping[str, Any], options: Options) -> Failure:
    """A task that ended in a failed state, by the route's fail_codes, else by its failMsg:
    a host outage, refused content, or a failed run (failCode 501, "generation failed", can
    be either of the last two)."""
    code = record.get(options.record["fail_code"])
    text = safe_text(record.get(options.record["fail_msg"])
                     or f"task ended {record.get(options.record['state'])}")
    kind = options.fail_codes.get(str(code)) or from_text(text, options.block_markers)
    return Failure(kind or Kind.UPSTREAM_BROKEN,
                   f"Kie task failed (failCode {code or 'none'}): {text}")


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
        images.append((yield from download(url, headers)))
    return ImageResult(images=tuple(images), upstream_id=task_id)


def flow(request: ImageRequest, route: Route) -> Flow:
    """One attempt; a failure whose text quotes the key (Kie's `msg` or `failMsg` may echo
    it) has it cut out before it leaves the adapter."""
    key = api_key(route)
    return (yield from keyless(attempt(request, route, key), key))


def attempt(request: ImageRequest, route: Route, key: str) -> Flow:
    """Upload references, create the task, poll it to an end state, then download its images."""
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
