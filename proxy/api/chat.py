"""POST /v1/chat/completions for the image models, in the shape OpenRouter set for image
output: `message.images[]` of `image_url` data URLs, one choice per image, `usage` with the
billed `cost`; with `stream: true`, chat.completion.chunk events and `data: [DONE]`.

It is a translation in front of the same router, billing and ledger as the images API. A model
Switchyard does not serve (text models included) is a 404 `model_not_found`; errors are
OpenAI's, naming the chat request's own fields."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api import inputs, surface
from proxy.api.auth import authenticate, resolve_model
from proxy.api.chat_schema import translate
from proxy.api.errors import ApiError, render
from proxy.api.metering import Charged, Renderer
from proxy.api.openai_schema import model_name
from proxy.api.policy import HEADER, request_policy
from proxy.api.render import Origin
from proxy.api.sse import Style
from proxy.domain import Image, ImageRequest, Served, Usage
from proxy.services import Services, services

PARAMS = surface.parameters("image_config.aspect_ratio", "image_config.image_size",
                            "messages")


async def completions(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    data = await inputs.json_object(request)
    model, suffix = resolve_model(svc.catalog, model_name(data), key)
    policy = request_policy(data.get("route"), request.headers.get(HEADER), suffix)
    ask = translate(model, data, policy)
    return await surface.answer(request, svc, key, ask, surface.Surface(
        _renderer(ask.with_text), STYLE, PARAMS, _with_cost))


def _renderer(with_text: bool) -> Renderer:
    async def render(origin: Origin, svc: Services, asked: ImageRequest,
                     served: Served) -> dict[str, Any]:
        return completion(origin.request_id, asked.model, served, with_text)
    return render


def completion(request_id: str, model: str, served: Served, with_text: bool) -> dict[str, Any]:
    """A chat.completion: one choice per image, the host's words (if text was not left out
    of `modalities`) as the first choice's content."""
    result = served.result
    choices = []
    for i, image in enumerate(result.images):
        words = image.revised_prompt or (result.text if i == 0 else None)
        choices.append({"index": i, "finish_reason": "stop", "logprobs": None, "message": {
            "role": "assistant", "content": words if with_text and words else None,
            "refusal": None, "images": [image_item(image)]}})
    return {"id": "chatcmpl-" + request_id.removeprefix("req_"), "object": "chat.completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage(result.usage), "provider": served.provider}


def image_item(image: Image) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{image.mime};base64,{image.b64}"}}


def usage(found: Usage | None) -> dict[str, Any]:
    """Token counts as the host reported them (zeros from hosts that bill per image); the
    bill itself is `cost`, in US dollars, as OpenRouter gives it."""
    found = found or Usage()
    return {"prompt_tokens": found.input_tokens, "completion_tokens": found.output_tokens,
            "total_tokens": found.input_tokens + found.output_tokens}


def _with_cost(done: Charged) -> None:
    done.content["usage"]["cost"] = float(done.billed)


def _events(done: Charged) -> Iterator[bytes]:
    """A chunk per choice with its images, then one with the finish reasons, the usage and,
    in `switchyard`, what the headers say of a plain answer; then [DONE]."""
    body = done.content
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
            "model": body["model"]}
    for choice in body["choices"]:
        message = choice["message"]
        delta = {"role": "assistant", "content": message["content"] or "",
                 "images": message["images"]}
        yield _event({**base, "choices": [{"index": choice["index"], "delta": delta,
                                           "finish_reason": None, "logprobs": None}]})
    _with_cost(done)
    yield _event({**base, "choices": [
        {"index": choice["index"], "delta": {}, "finish_reason": "stop", "logprobs": None}
        for choice in body["choices"]], "usage": body["usage"], "provider": body["provider"],
        "switchyard": surface.served_by(done)})
    yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _failure(error: ApiError) -> bytes:
    return b"data: " + bytes(render(error).body) + b"\n\n"


STYLE = Style(keepalive=b": keep-alive\n\n", events=_events, failure=_failure)
