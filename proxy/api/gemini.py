"""Gemini's own API, for the google-genai SDK: `POST /v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse` and `GET /v1beta/models[/{model}]`, in front of the same
router, billing and ledger as the images API; any host may serve them.

google-genai's default API version is v1, so the same is served under /v1: the methods by
their paths, the model list to a caller with Google's style of key (an OpenAI client gets
OpenAI's list). Answers are GenerateContentResponses, one candidate per image; errors are
Google's (errors.is_google)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api import inputs, surface
from proxy.api.auth import authenticate_google, may_use, resolve_model
from proxy.api.context import Endpoint
from proxy.api.errors import ApiError, bad_request, google_error, is_google
from proxy.api.gemini_schema import translate
from proxy.api.metering import Charged, Renderer
from proxy.api.policy import HEADER, request_policy
from proxy.api.render import Origin
from proxy.api.sse import Style
from proxy.billing.keys import KeyRecord
from proxy.catalog import Model
from proxy.domain import ImageRequest, Served, Usage
from proxy.services import Services, services

METHODS = ("generateContent", "streamGenerateContent")
DEFAULT_PAGE, MAX_PAGE = 50, 1000  # Google's
PARAMS = surface.parameters("generationConfig.imageConfig.aspectRatio",
                            "generationConfig.imageConfig.imageSize", "contents",
                            n="generationConfig.candidateCount")


async def generate(request: Request) -> Response:
    """POST /v1beta/models/{model}:{method}."""
    svc = services(request)
    key = await authenticate_google(request, svc)
    name, _, method = inputs.path_param(request, "model").rpartition(":")
    if method not in METHODS:
        raise ApiError(404, f"method '{method}' is not served here; use one of "
                            f"{', '.join(METHODS)}", code="not_found")
    stream = method == "streamGenerateContent"
    if stream and inputs.query(request, "alt") != "sse":
        raise bad_request("alt", "streamGenerateContent is served as server-sent events: add "
                                 "?alt=sse (as Google's SDKs do)", code="unsupported_value")
    model, suffix = _model(svc, name, key)
    data = await inputs.json_object(request)
    policy = request_policy(None, request.headers.get(HEADER), suffix)
    ask = translate(model, data, policy, stream)
    return await surface.answer(request, svc, key, ask, surface.Surface(
        _renderer(ask.with_text), STYLE, PARAMS))


async def list_models(request: Request) -> Response:
    """GET /v1beta/models: the key's image models, a page at a time (pageSize, pageToken)."""
    svc = services(request)
    key = await authenticate_google(request, svc)
    usable = [model for model in svc.catalog.models if may_use(key, model)]
    start = inputs.query_integer(request, "pageToken", 0, len(usable), 0)
    size = inputs.query_integer(request, "pageSize", 0, MAX_PAGE, 0) or DEFAULT_PAGE
    body: dict[str, Any] = {"models": [resource(m) for m in usable[start:start + size]]}
    if start + size < len(usable):
        body["nextPageToken"] = str(start + size)
    return Response(orjson.dumps(body), media_type="application/json")


async def get_model(request: Request) -> Response:
    """GET /v1beta/models/{model} (aliases resolve, under the name asked)."""
    svc = services(request)
    key = await authenticate_google(request, svc)
    name = inputs.path_param(request, "model").removeprefix("models/")
    model, _ = _model(svc, name, key)
    return Response(orjson.dumps(resource(model, name)), media_type="application/json")


def either(google: Endpoint, openai: Endpoint) -> Endpoint:
    """The endpoint for a path both surfaces serve (GET /v1/models): the caller's choice."""
    async def endpoint(request: Request) -> Response:
        return await (google if is_google(request.scope) else openai)(request)
    return endpoint


def resource(model: Model, name: str | None = None) -> dict[str, Any]:
    """A Model resource as Google lists it."""
    return {"name": f"models/{name or model.name}", "version": str(model.created),
            "displayName": model.name, "description": model.description,
            "supportedGenerationMethods": list(METHODS)}


def _model(svc: Services, name: str, key: KeyRecord) -> tuple[Model, str | None]:
    name = name.removeprefix("models/")
    try:
        return resolve_model(svc.catalog, name, key)
    except ApiError:
        raise ApiError(404, f"models/{name} is not found, or you do not have access to it. "
                            "GET /v1beta/models lists the models served here.",
                       param="model", code="model_not_found") from None


def _renderer(with_text: bool) -> Renderer:
    async def render(origin: Origin, svc: Services, asked: ImageRequest,
                     served: Served) -> dict[str, Any]:
        return response_body(origin.request_id, asked.model, served, with_text)
    return render


def response_body(response_id: str, model: str, served: Served,
                  with_text: bool) -> dict[str, Any]:
    """A GenerateContentResponse: one candidate per image, with the host's words (if asked
    for TEXT) before the first image."""
    result = served.result
    candidates = []
    for i, image in enumerate(result.images):
        words = image.revised_prompt or (result.text if i == 0 else None)
        parts: list[dict[str, Any]] = [{"text": words}] if with_text and words else []
        parts.append({"inlineData": {"mimeType": image.mime, "data": image.b64}})
        candidates.append({"content": {"role": "model", "parts": parts},
                           "finishReason": "STOP", "index": i})
    return {"candidates": candidates, "usageMetadata": usage_metadata(result.usage),
            "modelVersion": model, "responseId": response_id}


def usage_metadata(usage: Usage | None) -> dict[str, Any]:
    """Token counts as the host reported them; zeros from hosts that bill per image."""
    usage = usage or Usage()
    body: dict[str, Any] = {"promptTokenCount": usage.input_tokens,
                            "candidatesTokenCount": usage.output_tokens,
                            "totalTokenCount": usage.input_tokens + usage.output_tokens}
    if usage.input_tokens:
        body["promptTokensDetails"] = _details(usage.input_tokens, usage.input_image_tokens)
    if usage.output_tokens:
        body["candidatesTokensDetails"] = _details(usage.output_tokens,
                                                   usage.output_image_tokens)
    return body


def _details(total: int, image: int) -> list[dict[str, Any]]:
    pairs = (("TEXT", total - image), ("IMAGE", image))
    return [{"modality": modality, "tokenCount": count} for modality, count in pairs if count]


def _events(done: Charged) -> Iterator[bytes]:
    """One event per candidate; the last carries the usage and, in `switchyard`, what the
    headers say of a plain answer (a stream's headers leave before the run ends)."""
    body = done.content
    candidates = body["candidates"]
    for i, candidate in enumerate(candidates):
        event: dict[str, Any] = {"candidates": [candidate], "modelVersion": body["modelVersion"],
                                 "responseId": body["responseId"]}
        if i == len(candidates) - 1:
            event["usageMetadata"] = body["usageMetadata"]
            event["switchyard"] = surface.served_by(done)
        yield _event(event)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


# A blank line for a keep-alive: google-genai reads an SSE comment as a JSON chunk and fails.
STYLE = Style(keepalive=b"\r\n", events=_events,
              failure=lambda error: _event(google_error(error)))
