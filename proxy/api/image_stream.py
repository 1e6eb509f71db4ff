"""`stream: true` on the OpenAI images API: OpenAI's image_generation.* / image_edit.* events.

A host that streams partial images (OpenAI's gpt-image models) has them relayed as
`*.partial_image` events as they arrive; a host that delivers whole images gets an honest
stream: no invented partial images, SSE comments as keep-alives while the run goes on. Either
way one `*.completed` event per image follows once it is billed. The keep-alives, the early
plain errors, the error event after the stream began and the cancelled run of a client that
leaves are proxy/api/sse.py's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from proxy.api import surface
from proxy.api.errors import ApiError, bad_request, render
from proxy.api.metering import Charged
from proxy.api.openai_schema import Body
from proxy.api.render import Origin
from proxy.api.sse import Style
from proxy.domain import ImageRequest, PartialImage, Served, Usage
from proxy.media import EXTENSIONS
from proxy.services import Services

# The spec's enums for these event fields: other values are reported as "auto".
_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
_QUALITIES = frozenset({"low", "medium", "high"})
_BACKGROUNDS = frozenset({"transparent", "opaque"})


def taken(data: Mapping[str, Any], form: bool) -> tuple[dict[str, Any], bool, int]:
    """The body without `stream` and `partial_images` (validated here), whether a stream was
    asked, and how many partial images (0 without a stream). A stream carries base64 only,
    so `response_format: url` is refused with it."""
    body = Body(data, form)
    stream = body.boolean("stream")
    partials = body.integer("partial_images", 0, 3)
    if stream and body.string("response_format") == "url":
        raise bad_request("response_format", "a streamed answer carries its images as "
                                             "b64_json; omit 'response_format' or 'stream'",
                          code="unsupported_value")
    rest = {k: v for k, v in data.items() if k not in ("stream", "partial_images")}
    return rest, stream, (partials or 0) if stream else 0


async def _events_body(origin: Origin, svc: Services, asked: ImageRequest,
                       served: Served) -> dict[str, Any]:
    """The completed events, one per image; the request's token usage on the last (a host
    reports it for the whole request, and a client summing the events must count it once)."""
    kind = _kind(asked)
    images = served.result.images
    events = []
    for i, image in enumerate(images):
        events.append({
            "type": f"{kind}.completed", "b64_json": image.b64, "created_at": int(time.time()),
            "size": _enum(served.result.size, _SIZES),
            "quality": _enum(asked.quality, _QUALITIES),
            "background": _enum(asked.background, _BACKGROUNDS),
            "output_format": EXTENSIONS.get(image.mime, asked.output_format),
            "usage": _usage(served.result.usage if i == len(images) - 1 else None)})
    return {"events": events}


def _partial(asked: ImageRequest, image: PartialImage) -> bytes:
    """A host's partial image as OpenAI's event: what the host said of it where the spec's
    enums allow, else what was asked, as the completed event says."""
    name = f"{_kind(asked)}.partial_image"
    event = {"type": name, "b64_json": image.b64,
             "created_at": int(time.time()), "size": _enum(image.size, _SIZES),
             "quality": _enum(image.quality, _QUALITIES, asked.quality),
             "background": _enum(image.background, _BACKGROUNDS, asked.background),
             "output_format": EXTENSIONS.get(image.mime, asked.output_format),
             "partial_image_index": image.index}
    return _event(name, orjson.dumps(event))


def _kind(asked: ImageRequest) -> str:
    return "image_generation" if asked.kind == "generate" else "image_edit"


def _enum(value: str | None, allowed: frozenset[str], fallback: str | None = None) -> str:
    """`value` if the spec's enum has it, else `fallback` if it does, else "auto"."""
    for candidate in (value, fallback):
        if candidate in allowed or candidate == "auto":
            return candidate or "auto"
    return "auto"


def _usage(found: Usage | None) -> dict[str, Any]:
    found = found or Usage()
    return {"input_tokens": found.input_tokens, "output_tokens": found.output_tokens,
            "total_tokens": found.input_tokens + found.output_tokens,
            "input_tokens_details": {"text_tokens": found.input_tokens - found.input_image_tokens,
                                     "image_tokens": found.input_image_tokens}}


def _events(done: Charged) -> Iterator[bytes]:
    """Each event with its `event:` line, as OpenAI sends them; the last also carries, in
    `switchyard`, what the headers of a plain answer say (they left before the run ended)."""
    events = done.content["events"]
    events[-1]["switchyard"] = surface.served_by(done)
    for event in events:
        yield _event(event["type"], orjson.dumps(event))


def _failure(error: ApiError) -> bytes:
    """OpenAI's error body, which the SDKs raise as an APIError."""
    return _event("error", bytes(render(error).body))


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


SURFACE = surface.Surface(_events_body, Style(keepalive=b": keep-alive\n\n", events=_events,
                                              failure=_failure), partial=_partial)
