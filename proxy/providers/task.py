"""The `task` protocol: any host whose API is submit -> task id -> poll, described by route data.

Nothing here names a vendor. A route's options (provider options, then route options) say
where to submit and with what body — a template of the host's JSON in which placeholders such
as "{prompt}" stand for the request's fields — where the task id, the state, the result images
and the error sit in the replies (JSON paths, see jsonpath.py), which of the host's state
values mean pending, succeeded or failed, and how to poll. `validate(options)` checks all of it
and names the option at fault; a route that fails it fails loudly at first use. Failures the
host reports inside an HTTP 200 (an envelope `code`, a failed state) are failures here too.
Result files are downloaded now, only from the provider's allowed hosts (flows.py checks).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Generator, Mapping
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from proxy import geometry, imaging
from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError, from_status, refusal, retry_after
from proxy.providers import jsonpath
from proxy.providers.base import Adapter, Flow, Step, UpstreamCall, UpstreamReply, check
from proxy.providers.jsonpath import Path
from proxy.providers.results import json_or_none, result_image, safe_text
from proxy.providers.task_options import PLACEHOLDER, Options, placeholders, token, validate
from proxy.providers.upstream import (
    api_key,
    auth_for,
    keeps_input_shape,
    keyless,
    mask_refused,
    pauses,
    reference,
)

__all__ = ["ADAPTER", "Options", "flow", "render", "validate"]

_WHAT = {Kind.BAD_REQUEST: "rejected the request", Kind.AUTH: "refused the key or account",
         Kind.CONTENT_BLOCKED: "refused the content", Kind.RATE_LIMITED: "rate limit reached",
         Kind.OVERLOADED: "is overloaded or unavailable", Kind.TIMEOUT: "timed out",
         Kind.UPSTREAM_BROKEN: "failed"}

Poll = Generator[Step, UpstreamReply | None, tuple[dict[str, Any], str]]


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """The template with its placeholders filled. A string that is exactly "{name}" takes the
    value as is (a number stays a number, a list a list); placeholders inside longer text are
    filled as text. A key or item whose value is absent (None) is left out."""
    if isinstance(template, dict):
        rendered = {key: render(item, values) for key, item in template.items()}
        return {key: item for key, item in rendered.items() if item is not None}
    if isinstance(template, list):
        return [item for item in (render(i, values) for i in template) if item is not None]
    if not isinstance(template, str):
        return template
    if whole := PLACEHOLDER.fullmatch(template):
        return values.get(whole.group(1))
    names = PLACEHOLDER.findall(template)
    if any(values.get(name) is None for name in names):
        return None
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def body_values(request: ImageRequest, route: Route, options: Options) -> dict[str, Any]:
    """The request's fields under the names body templates use."""
    if request.mask is not None:
        raise mask_refused()
    if request.images and "images" not in placeholders(options.body):
        raise UpstreamError(Failure(Kind.BAD_REQUEST, f"{route.provider.name} takes no "
                                                      f"reference images ('image')"))
    shape = request.geometry
    keeps_input = keeps_input_shape(request)
    size = shape.exact_size or geometry.size_text(*geometry.pixels(shape.aspect_ratio,
                                                                   shape.tier))
    return {
        "model": route.upstream_model, "prompt": request.prompt, "n": request.n,
        "aspect_ratio": options.edit_aspect_ratio if keeps_input and options.edit_aspect_ratio
        else shape.aspect_ratio,
        "resolution": options.resolutions.get(shape.tier, shape.tier), "size": size,
        "images": [reference(i, options.inline_images, options.provider, "image")
                   for i in request.images] or None,
        "output_format": options.output_formats.get(request.output_format),
        "callback_url": options.callback_url or None, "seed": request.seed,
    }


def _fill(path: str, values: Mapping[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: quote(values[m.group(1)], safe="/"), path)


def _auth(url: str, route: Route, key: str, options: Options) -> dict[str, str]:
    """The key goes only to the provider's own host."""
    return auth_for(url, route, options.auth_header, f"{options.auth_scheme} {key}".strip())


def submit_call(request: ImageRequest, route: Route, key: str, options: Options) -> UpstreamCall:
    url = route.provider.base_url + _fill(options.submit_path, {"model": route.upstream_model})
    return UpstreamCall(options.submit_method, url, _auth(url, route, key, options),
                        json=render(options.body, body_values(request, route, options)))


def poll_call(submitted: Mapping[str, Any], task_id: str, route: Route, key: str,
              options: Options) -> UpstreamCall:
    """How to ask about the task: a status URL from the submit reply, else the path template."""
    url = jsonpath.first(options.poll_url, submitted)
    values = {"id": task_id, "model": route.upstream_model}
    if not isinstance(url, str) or not url:
        if not options.poll_path:
            raise _broken(f"{options.provider} gave no status URL at options.poll_url_path")
        url = route.provider.base_url + _fill(options.poll_path, values)
    body = render(options.poll_body, values) if options.poll_body is not None else None
    return UpstreamCall(options.poll_method, url, _auth(url, route, key, options), json=body,
                        kind="poll")


def classify(reply: UpstreamReply, options: Options) -> Failure | None:
    """An HTTP error as a failure, from its status, its code and its message; None for 2xx."""
    if 200 <= reply.status < 300:
        return None
    body = json_or_none(reply)
    text = _text_at(options.error_message, body) or \
        safe_text(reply.body.decode("utf-8", "replace")) or "no detail"
    return failure(options, jsonpath.first(options.error_code, body), text, reply.headers,
                   reply.status)


def failure(options: Options, code: Any, text: str, headers: httpx.Headers,
            status: int | None) -> Failure:
    """The class of a failure: the route's error_kinds for its code, else a content refusal
    in its text, else its HTTP status (or a code that reads as one), else upstream_broken.
    `status` is None for a task that ended failed. A status or code of the key, the pace or
    an outage is never a refusal, nor is a text that says the host is unavailable; a failed
    task's code 500 or 501 may be one (Kie-style hosts give refused content failCode 501)."""
    code_text = None if code is None else token(code)
    kind = options.error_kinds.get(code_text or "")
    http = status if status is not None and status >= 400 else _http_like(code_text)
    plain = None if http is None else from_status(http, headers).kind
    about_content = plain is None or (plain is Kind.BAD_REQUEST and http != 402) or (
        status is None and plain is Kind.UPSTREAM_BROKEN)
    if kind is None and about_content and refusal(f"{text} {code_text or ''}",
                                                  options.block_markers):
        kind = Kind.CONTENT_BLOCKED
    if kind is None and plain is not None:
        kind = Kind.AUTH if http == 402 else Kind.UPSTREAM_BROKEN if http == 404 else plain
    kind = kind or Kind.UPSTREAM_BROKEN
    after = retry_after(headers) if kind in (Kind.RATE_LIMITED, Kind.OVERLOADED) else None
    detail = f" (code {code_text})" if code_text else ""
    return Failure(kind, f"{options.provider} {_WHAT[kind]}: {text}{detail}", after, status)


def _http_like(code: str | None) -> int | None:
    return int(code) if code and code.isdigit() and 400 <= int(code) <= 599 else None


def _text_at(paths: tuple[Path, ...], body: Any) -> str:
    """The first non-empty text any of the paths finds (objects found are passed over)."""
    for path in paths:
        for value in path.find(body):
            if isinstance(value, str | int) and str(value).strip():
                return safe_text(value)
    return ""


def _broken(message: str) -> UpstreamError:
    return UpstreamError(Failure(Kind.UPSTREAM_BROKEN, message))


def envelope(reply: UpstreamReply, options: Options) -> dict[str, Any]:
    """A 2xx reply's JSON object, after its envelope code (if the route reads one) says ok."""
    body = reply.json()
    if not isinstance(body, dict):
        raise _broken(f"{options.provider} returned a malformed reply")
    code = jsonpath.first(options.code, body)
    if code is not None and token(code) not in options.ok_codes:
        text = _text_at(options.error_message, body) or "no detail"
        raise UpstreamError(failure(options, code, text, reply.headers, reply.status))
    return body


def state_of(task: Mapping[str, Any], options: Options, required: bool = True) -> str:
    """pending, succeeded or failed; a submit reply without a state counts as pending."""
    value = jsonpath.first(options.state, task)
    if value is None:
        if not required:
            return "pending"
        raise _broken(f"{options.provider} reply has no task state at options.state_path")
    state = options.states.get(token(value))
    if state is None:
        raise _broken(f"{options.provider} task state {token(value)!r} is not in options.states")
    return state


def wait_done(submitted: dict[str, Any], task_id: str, route: Route, key: str,
              options: Options) -> Poll:
    """Poll until the task leaves pending, within the route's max wait."""
    call = poll_call(submitted, task_id, route, key, options)
    classified = partial(classify, options=options)
    waits = pauses(options, f"{options.provider} task unfinished")
    task, state = submitted, state_of(submitted, options, required=False)
    while state == "pending":
        yield next(waits)
        task = envelope(check((yield call), classified), options)
        state = state_of(task, options)
    return task, state


def task_failure(task: Mapping[str, Any], options: Options) -> Failure:
    """A task that ended failed, classified from its error message and code."""
    text = _text_at(options.error_message, task) or "no reason given"
    return failure(options, jsonpath.first(options.error_code, task), text, httpx.Headers(),
                   None)


def collect(task: Mapping[str, Any], task_id: str, request: ImageRequest, route: Route,
            key: str, options: Options) -> Flow:
    """The result's images: URLs downloaded now, data URIs and bare base64 as given."""
    found = next((texts for path in options.results
                  if (texts := [v for v in path.find(task) if isinstance(v, str) and v])), [])
    if not found:
        raise _broken(f"{options.provider} task succeeded without a result at "
                      f"options.result_paths")
    images = []
    for item in found[: request.n]:
        if item.startswith(("data:", "https://", "http://")):
            images.append((yield from result_image(item, _auth(item, route, key, options))))
        else:
            images.append(from_b64(item))
    return ImageResult(images=tuple(images), upstream_id=task_id)


def from_b64(text: str) -> Image:
    """Bare base64 image data, passed on untouched; its mime from the decoded magic bytes."""
    try:
        kind = imaging.sniff(base64.b64decode(text[:64], validate=True))
    except (binascii.Error, ValueError):
        kind = None
    if kind is None:
        raise _broken("result is neither a URL nor a base64 image")
    return Image(mime=f"image/{kind}", b64=text)


def flow(request: ImageRequest, route: Route) -> Flow:
    """Submit, poll to a final state, then collect the images (or classify the failure). A
    host that quotes the key back in an error message does not get it passed on."""
    options = Options.of(route)
    key = api_key(route)
    return (yield from keyless(_attempt(request, route, key, options), key))


def _attempt(request: ImageRequest, route: Route, key: str, options: Options) -> Flow:
    reply = check((yield submit_call(request, route, key, options)),
                  partial(classify, options=options))
    submitted = envelope(reply, options)
    task_id = jsonpath.first(options.task_id, submitted)
    if not isinstance(task_id, str | int) or isinstance(task_id, bool) or task_id == "":
        raise _broken(f"{options.provider} returned no task id at options.task_id_path")
    task, state = yield from wait_done(submitted, str(task_id), route, key, options)
    if state == "failed":
        raise UpstreamError(task_failure(task, options))
    return (yield from collect(task, str(task_id), request, route, key, options))


# One image per task: n > 1 runs n tasks in parallel (flows.generate), so "{n}" is always 1.
def _takes_callback(route: Route) -> bool:
    """Only a route whose body template has a {callback_url} placeholder hands one over."""
    body = {**route.provider.options, **route.options}.get("body")
    return "{callback_url}" in orjson.dumps(body).decode()


ADAPTER = Adapter("task", flow, images_per_call=1, validate=validate,
                  takes_callback=_takes_callback)
