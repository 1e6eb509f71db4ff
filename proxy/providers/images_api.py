"""What the OpenAI-shaped image APIs share: options, auth, sizes, data[] items and error bodies.

openai_images, together and byteplus all answer `{"data": [{"b64_json"|"url"...}]}` and fail
with `{"error": {"code", "message"}}`; the parts they share live here once, so each protocol
module only says what differs. Vendor facts (paths, auth style, size rules, error codes we
could not confirm) are route or provider options, read through `option`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from proxy import geometry, imaging
from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult, InputImage, Usage, token_count
from proxy.failures import Failure, Kind, UpstreamError, from_status, retry_after
from proxy.providers.base import Flow, Step, UpstreamCall, UpstreamReply, check

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
EXTENSION = {mime: ext for ext, mime in MIME.items()}
_URL = re.compile(r"https?://\S+")
_KEYLIKE = re.compile(r"\b(?:sk|key|api|r8|ooq)[-_][A-Za-z0-9*_\-]{6,}", re.IGNORECASE)
_HINTED = frozenset({Kind.RATE_LIMITED, Kind.OVERLOADED, Kind.TIMEOUT, Kind.UPSTREAM_BROKEN})
T = TypeVar("T")
_ABSENT = object()


def remembered(route: Route, name: Any, make: Callable[[], T]) -> T:
    """`make()`, once per route: what follows from its options and key alone is not worked
    out again for every request (a raised failure is not remembered)."""
    value = route.memo.get(name, _ABSENT)
    if value is _ABSENT:
        value = route.memo[name] = make()
    return value  # type: ignore[no-any-return]


def option(route: Route, name: str, default: Any = None) -> Any:
    """A route option, else the provider's, else the default: vendor facts stay data."""
    if name in route.options:
        return route.options[name]
    return route.provider.options.get(name, default)


def auth_headers(route: Route) -> dict[str, str]:
    """The credential header in the host's style (`auth_header`, `auth_scheme` options) plus
    any static `headers`; AUTH failure when no key is configured. A copy: callers add to it."""
    return dict(remembered(route, "auth_headers", lambda: _auth_headers(route)))


def _auth_headers(route: Route) -> dict[str, str]:
    key = route.provider.key
    if key is None:
        raise UpstreamError(Failure(Kind.AUTH, f"no API key configured for provider "
                                               f"{route.provider.name!r}"))
    scheme = str(option(route, "auth_scheme", "Bearer"))
    value = f"{scheme} {key.reveal()}" if scheme else key.reveal()
    return {**dict(option(route, "headers", {})), str(option(route, "auth_header",
                                                                "authorization")): value}


def endpoint(route: Route, name: str, default_path: str) -> str:
    """base_url + the path option `name` ({model} is replaced by the upstream model id)."""
    return remembered(route, ("endpoint", name, default_path),
                      lambda: _endpoint(route, name, default_path))


def _endpoint(route: Route, name: str, default_path: str) -> str:
    path = str(option(route, name, default_path)).replace("{model}", route.upstream_model)
    return route.provider.base_url + path


def extra_body(route: Route) -> Mapping[str, Any]:
    """Host-specific fields the operator wants sent as is (`extra_body`, provider then route)."""
    return remembered(route, "extra_body", lambda: _extra_body(route))


def _extra_body(route: Route) -> dict[str, Any]:
    return {**dict(route.provider.options.get("extra_body", {})),
            **dict(route.options.get("extra_body", {}))}


def data_url(image: InputImage) -> str:
    """An input image as the URL hosts accept: https as given, bytes as a data: URL."""
    if image.url is not None:
        return image.url
    assert image.data is not None
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"


def reject_mask(request: ImageRequest, route: Route) -> None:
    """Hosts without masks must not ignore one: the edit would touch the whole image."""
    if request.mask is not None:
        raise UpstreamError(Failure(Kind.BAD_REQUEST, f"route {route.id} cannot apply a 'mask'; "
                                                      "send the edit without one"))


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a data[] array held: the images, the per-item failures, and the size if known."""

    images: tuple[Image, ...]
    failures: tuple[Failure, ...]
    size: str | None


Collected = Generator[Step, UpstreamReply | None, Delivered]


def peek(b64: str) -> tuple[str | None, tuple[int, int] | None]:
    """Mime and pixel size from the start of base64 image data, without touching the rest."""
    kind, found = imaging.b64_header(b64)
    return (MIME.get(kind) if kind else None), found


def fetch(url: str) -> Generator[Step, UpstreamReply | None, tuple[Image, str | None]]:
    """Download a result URL (the driver checks its host) and base64 it: the one place we
    encode. A data: URL is split instead of fetched."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        mime = header[5:].split(";")[0] or None
        sniffed, dims = peek(payload)
        return Image(sniffed or mime or "image/png", payload), _size(dims)
    reply = yield UpstreamCall("GET", url, kind="fetch")
    if reply is None or reply.status != 200:
        status = reply.status if reply is not None else None
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "could not download the result "
                                                          f"image (HTTP {status})", None, status))
    kind = imaging.sniff(reply.body)
    ctype = reply.headers.get("content-type", "").split(";")[0].strip().lower()
    mime = MIME.get(kind) if kind else (ctype if ctype.startswith("image/") else None)
    if mime is None:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "the result URL did not hold an image"))
    image = Image(mime, base64.b64encode(reply.body).decode("ascii"))
    return image, _size(imaging.dimensions(reply.body))


def collect(items: list[Any], fallback_mime: str, kinds: Mapping[str, Kind]) -> Collected:
    """Images from data[] items (b64_json, url, or a per-item error), in order."""
    images: list[Image] = []
    failures: list[Failure] = []
    size: str | None = None
    for item in items:
        if not isinstance(item, Mapping):
            failures.append(Failure(Kind.UPSTREAM_BROKEN, "upstream returned a malformed item"))
            continue
        if item.get("error"):
            failures.append(item_failure(item["error"], kinds))
            continue
        if item.get("b64_json"):
            mime, dims = peek(item["b64_json"])
            image, found = Image(mime or fallback_mime, item["b64_json"]), _size(dims)
        elif item.get("url"):
            image, found = yield from fetch(item["url"])
        else:
            failures.append(Failure(Kind.UPSTREAM_BROKEN, "upstream returned an empty image"))
            continue
        revised = item.get("revised_prompt")  # text, or none at all: it goes to clients
        images.append(Image(image.mime, image.b64, revised if isinstance(revised, str) and
                            revised else None))
        size = size or valid_size(item.get("size")) or found
    return Delivered(tuple(images), tuple(failures), size)


def delivered_or_raise(delivered: Delivered) -> Delivered:
    """A partial success delivers what succeeded; if nothing did, raise the telling failure:
    content_blocked only when every item was blocked, else the first other failure."""
    if delivered.images or not delivered.failures:
        return delivered
    others = [f for f in delivered.failures if f.kind is not Kind.CONTENT_BLOCKED]
    raise UpstreamError(others[0] if others else delivered.failures[0])


def exchange(call: UpstreamCall, kinds: Mapping[str, Kind], asked_format: str) -> Flow:
    """The whole flow of these synchronous APIs: one call, then its data[] (fetching any
    URLs). The image size is the one the upstream names, else the one the image header says."""
    return (yield from answered(check((yield call), lambda r: classify(r, kinds)), kinds,
                                asked_format))


def answered(reply: UpstreamReply, kinds: Mapping[str, Kind], asked_format: str) -> Flow:
    """The images of a successful whole reply: its data[] (fetching any URLs)."""
    body = json_object(reply)
    fallback = MIME.get(str(body.get("output_format") or asked_format), "image/png")
    delivered = delivered_or_raise((yield from collect(body["data"], fallback, kinds)))
    return ImageResult(images=delivered.images,
                       size=valid_size(body.get("size")) or delivered.size,
                       upstream_id=upstream_id(reply, body), usage=usage(body))


def usage(body: Mapping[str, Any]) -> Usage | None:
    """OpenAI-style usage to Usage. Image APIs' output tokens are image tokens unless the
    upstream splits them out (output_tokens_details, since 2025-12)."""
    raw = body.get("usage")
    if not isinstance(raw, Mapping):
        return None
    output = token_count(raw.get("output_tokens"))
    in_details = raw.get("input_tokens_details")
    out_details = raw.get("output_tokens_details")
    return Usage(input_tokens=token_count(raw.get("input_tokens")), output_tokens=output,
                 input_image_tokens=token_count(in_details.get("image_tokens"))
                 if isinstance(in_details, Mapping) else 0,
                 output_image_tokens=token_count(out_details.get("image_tokens"))
                 if isinstance(out_details, Mapping) else output)


def upstream_id(reply: UpstreamReply, body: Mapping[str, Any]) -> str | None:
    value = body.get("id") or reply.headers.get("x-request-id")
    return str(value) if value else None


def json_object(reply: UpstreamReply) -> dict[str, Any]:
    """The reply body as a JSON object, or UPSTREAM_BROKEN."""
    body = reply.json()
    if not isinstance(body, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply was not a JSON object",
                                    None, reply.status))
    return body


def valid_size(value: Any) -> str | None:
    """'WxH' normalised, or None for anything that is not a size (e.g. 'auto')."""
    if not isinstance(value, str):
        return None
    try:
        return geometry.size_text(*geometry.parse_size(value))
    except ValueError:
        return None


def _size(dims: tuple[int, int] | None) -> str | None:
    return geometry.size_text(*dims) if dims else None


# --- errors --------------------------------------------------------------------------------


def error_kinds(route: Route, defaults: Mapping[str, Kind]) -> Mapping[str, Kind]:
    """The code-pattern -> Kind table: the operator's `error_kinds` option first, then ours."""
    return remembered(route, ("error_kinds", id(defaults)),
                      lambda: _error_kinds(route, defaults))


def _error_kinds(route: Route, defaults: Mapping[str, Kind]) -> dict[str, Kind]:
    custom = {str(k): Kind(v) for k, v in dict(option(route, "error_kinds", {})).items()}
    return {**custom, **{k: v for k, v in defaults.items() if k not in custom}}


def match_kind(kinds: Mapping[str, Kind], *codes: str | None) -> Kind | None:
    """The kind of the first code that matches a pattern (fnmatch, case-sensitive)."""
    for code in codes:
        if code:
            for pattern, kind in kinds.items():
                if fnmatchcase(code, pattern):
                    return kind
    return None


def classify(reply: UpstreamReply, kinds: Mapping[str, Kind]) -> Failure | None:
    """None for a success; else the failure an error status or an `error` in a 200 means."""
    try:
        body = reply.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, Mapping) else None
    if reply.status < 300 and not error:
        return None
    code, type_, message = _error_parts(error)
    kind = match_kind(kinds, code, type_)
    if reply.status < 300:
        base = Failure(kind or Kind.UPSTREAM_BROKEN, "upstream reported an error in a "
                                                     "successful reply", None, reply.status)
    else:
        base = from_status(reply.status, reply.headers)
    return _failure(kind or base.kind, base, code, message, reply)


def item_failure(error: Any, kinds: Mapping[str, Kind]) -> Failure:
    """The failure of one data[] item that carries its own error."""
    code, type_, message = _error_parts(error)
    kind = match_kind(kinds, code, type_) or Kind.UPSTREAM_BROKEN
    return _failure(kind, Failure(kind, "upstream failed to generate an image"), code,
                    message, None)


def _failure(kind: Kind, base: Failure, code: str | None, message: str | None,
             reply: UpstreamReply | None) -> Failure:
    """A client-safe message: the upstream's own words only where they help the client
    (bad request, blocked content), never on auth errors, URLs and key-like tokens removed."""
    text = {Kind.CONTENT_BLOCKED: "upstream refused the content",
            Kind.BAD_REQUEST: "upstream rejected the request"}.get(kind, base.message)
    if code:
        text += f" ({code})"
    if message and kind in (Kind.BAD_REQUEST, Kind.CONTENT_BLOCKED):
        text += ": " + _clean(message)
    hint = base.retry_after_s
    if hint is None and reply is not None and kind in _HINTED:
        hint = retry_after(reply.headers)
    return Failure(kind, text, hint if kind in _HINTED else None, base.status)


def _error_parts(error: Any) -> tuple[str | None, str | None, str | None]:
    if isinstance(error, Mapping):
        return (_text(error.get("code")), _text(error.get("type")),
                _text(error.get("message")))
    return None, None, _text(error)


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _clean(message: str) -> str:
    text = _KEYLIKE.sub("[redacted]", _URL.sub("[link]", message))
    return text if len(text) <= 300 else text[:297] + "..."
