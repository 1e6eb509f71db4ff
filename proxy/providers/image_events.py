"""OpenAI's image stream, as a host sends it: `*.partial_image` events, then `*.completed`.

Pure translation both ways of the driver (flows.py reads the stream): `partial` turns one
event into a PartialImage the client gets at once, and `result` reads the images out of the
events that were kept (the completed ones, and any error). Partial images are never billed;
completed ones are, even when the stream broke after them (n > 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.domain import Image, ImageResult, PartialImage, Usage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import images_api as api
from proxy.providers.base import UpstreamReply
from proxy.upstream import events, fastjson
from proxy.upstream.events import ServerEvent

PARTIAL = ".partial_image"
COMPLETED = ".completed"


def partial(event: ServerEvent) -> PartialImage | None:
    """The partial image an event carries; None for any other event (kept for `result`)."""
    if not event.name.endswith(PARTIAL) and event.name not in ("message", ""):
        return None
    data = _object(event)
    if not str(data.get("type", "")).endswith(PARTIAL) or \
            not isinstance(data.get("b64_json"), str):
        return None
    b64 = data["b64_json"]
    mime, _ = api.peek(b64)
    if mime is None:  # not an image: a preview is never relayed unchecked (nor commits a run)
        return None
    index = data.get("partial_image_index")
    return PartialImage(b64, index if isinstance(index, int) else 0, mime,
                        _text(data.get("size")), _text(data.get("quality")),
                        _text(data.get("background")))


def is_stream(reply: UpstreamReply) -> bool:
    return events.is_event_stream(reply.headers.get("content-type", ""))


def result(reply: UpstreamReply, kinds: Mapping[str, Kind], asked_format: str) -> ImageResult:
    """The completed images of a stream. What completed is delivered even if the stream then
    failed; a stream with none raises its error event's failure, or UPSTREAM_BROKEN if it
    just ended."""
    images: list[Image] = []
    usages: list[Usage | None] = []
    size: str | None = None
    failure: Failure | None = None
    for event in events.decode_all(reply.body):
        data = _object(event)
        if event.name == "error" or data.get("error"):
            failure = failure or api.item_failure(data.get("error", data), kinds)
        elif str(data.get("type", "")).endswith(COMPLETED) and data.get("b64_json"):
            mime, dims = api.peek(str(data["b64_json"]))
            fallback = api.MIME.get(str(data.get("output_format") or asked_format))
            images.append(Image(mime or fallback or "image/png", str(data["b64_json"])))
            size = size or api.valid_size(data.get("size")) or (
                f"{dims[0]}x{dims[1]}" if dims else None)
            usages.append(api.usage(data))
    if not images:
        raise UpstreamError(failure or Failure(
            Kind.UPSTREAM_BROKEN, "the host's stream ended before an image was completed"))
    # [U] how OpenAI counts tokens across the completed events of n > 1: each event's own.
    return ImageResult(tuple(images), size, reply.headers.get("x-request-id"),
                       Usage.total(usages))


def _object(event: ServerEvent) -> dict[str, Any]:
    try:
        data = fastjson.loads(event.data)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
