"""Chat completions with image output (proxy/api/chat.py) for the OpenAPI document: OpenAI's
chat schemas, restricted to what chat_schema.py accepts, plus OpenRouter's image fields
(`modalities`, `image_config`, `message.images[]`, `usage.cost`) and our own.

Field definitions are OpenAI's, taken from its spec when the document is built; what an image
answer cannot be (tools, response formats, audio…) is left out of the request, as the handler
refuses it unless it is empty.
"""

from __future__ import annotations

import copy
from typing import Any

from proxy.api import openapi_ours as ours
from proxy.api.chat_schema import HINTS, MAX_N, ROLES
from proxy.api.surface import IGNORED_HEADER
from proxy.domain import ASPECT_RATIOS, TIERS

Json = dict[str, Any]
_STRING = {"type": "string"}
_IMAGE_ITEM: Json = {
    "type": "object", "required": ["image_url"],
    "properties": {"type": {"type": "string", "enum": ["image_url"]},
                   "image_url": {"type": "object", "required": ["url"],
                                 "properties": {"url": {
                                     "type": "string",
                                     "description": "an https:// or base64 data: URL"}}}}}


def _openai_field(openai: Json, name: str) -> Json:
    """A request field as OpenAI's spec defines it for chat completions."""
    own = openai["CreateChatCompletionRequest"]["allOf"][1]["properties"]
    shared = openai["ModelResponseProperties"]["properties"]
    return copy.deepcopy(own[name] if name in own else shared[name])


def _messages(openai: Json) -> Json:
    """A message and its content parts: text, and images by https:// or data: URL."""
    text_part = copy.deepcopy(openai["ChatCompletionRequestMessageContentPartText"])
    text_part["properties"]["text"] = ours.TEXT
    image_part = copy.deepcopy(openai["ChatCompletionRequestMessageContentPartImage"])
    image_part["properties"]["image_url"]["properties"]["url"] = _IMAGE_ITEM[
        "properties"]["image_url"]["properties"]["url"]
    message = {
        "type": "object", "required": ["role", "content"], "additionalProperties": False,
        "description": "A message: the system and user messages' text, in order, is the "
                       "prompt; every image in the conversation is a reference image (an "
                       "edit), the assistant's earlier `images` included.",
        "properties": {
            "role": {"type": "string", "enum": list(ROLES)},
            "content": {"anyOf": [ours.TEXT, {"type": "null"}, {
                "type": "array", "items": {"anyOf": [ours.ref("ChatImageContentPartText"),
                                                     ours.ref("ChatImageContentPartImage")]}}]},
            "name": _STRING,
            "images": {"type": "array", "items": ours.ref("ChatImageItem")}}}
    return {"ChatImageContentPartText": text_part, "ChatImageContentPartImage": image_part,
            "ChatImageMessage": message}


def _request(openai: Json, model: Json) -> Json:
    return {
        **_messages(openai),
        "CreateChatImageCompletionRequest": {
            "type": "object", "required": ["model", "messages"], "additionalProperties": False,
            "dependentSchemas": {"stream_options": {  # OpenAI's rule
                "required": ["stream"], "properties": {"stream": {"const": True}}}},
            "description": "Switchyard: a chat completion for an image model, in the shape "
                           "OpenRouter set for image output. Sampling hints no image host "
                           "takes are accepted and named in the x-switchyard-ignored header.",
            "properties": {
                "model": model,
                "messages": {"type": "array", "minItems": 1, "items": ours.ref("ChatImageMessage")},
                "modalities": {
                    "type": "array", "items": {"type": "string", "enum": ["image", "text"]},
                    "contains": {"const": "image"},
                    "description": "OpenRouter's: must include \"image\"; \"text\" lets the "
                                   "answer carry the host's words"},
                "image_config": {
                    "type": "object", "additionalProperties": False,
                    "description": "OpenRouter's: the shape and resolution tier",
                    "properties": {"aspect_ratio": {"type": "string",
                                                    "enum": list(ASPECT_RATIOS)},
                                   "image_size": {"type": "string", "enum": list(TIERS)}}},
                "stream": _openai_field(openai, "stream"),
                "stream_options": _openai_field(openai, "stream_options"),
                "n": {**_openai_field(openai, "n"), "maximum": MAX_N,
                      "description": "how many images (one choice each)"},
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1,
                         "description": "a seed, for the hosts that take one"},
                "user": _openai_field(openai, "user"),
                "route": ours.ref("RoutePolicy"),
                **{name: _openai_field(openai, name) for name in HINTS}}},
    }


def _kept(openai: Json, name: str, keep: tuple[str, ...], extra: Json | None = None) -> Json:
    """OpenAI's schema `name` with only the fields an image answer has, and ours."""
    schema: Json = copy.deepcopy(openai[name])
    schema["properties"] = {**{k: v for k, v in schema["properties"].items() if k in keep},
                            **(extra or {})}
    if "required" in schema:
        schema["required"] = [k for k in schema["required"] if k in schema["properties"]]
    return schema


def _choices(schema: Json, part: str, part_schema: str) -> None:
    """Choices with our `part` (message or delta), and no log probabilities (always null)."""
    items = schema["properties"]["choices"]["items"]
    items["properties"] = {"index": items["properties"]["index"],
                           "finish_reason": items["properties"]["finish_reason"],
                           part: ours.ref(part_schema), "logprobs": {"type": "null"}}


def _response(openai: Json) -> Json:
    images = {"type": "array", "items": ours.ref("ChatImageItem"),
              "description": "OpenRouter's: the images, as data URLs"}
    top = ("id", "object", "created", "model", "choices")
    provider = {"type": "string", "description": "the provider that served it"}
    completion = _kept(openai, "CreateChatCompletionResponse", top,
                       {"usage": ours.ref("ChatImageUsage"), "provider": provider})
    _choices(completion, "message", "ChatImageResponseMessage")
    chunk = _kept(openai, "CreateChatCompletionStreamResponse", top, {
        "usage": ours.ref("ChatImageUsage"), "provider": provider,
        "switchyard": {"type": "object", "additionalProperties": _STRING,
                       "description": "on the last chunk: what the x-switchyard-* headers "
                                      "of a plain answer say"}})
    _choices(chunk, "delta", "ChatImageStreamDelta")
    return {
        "ChatImageItem": _IMAGE_ITEM,
        "ChatImageResponseMessage": _kept(openai, "ChatCompletionResponseMessage",
                                          ("role", "content", "refusal"), {"images": images}),
        "ChatImageStreamDelta": _kept(openai, "ChatCompletionStreamResponseDelta",
                                      ("role", "content"), {"images": images}),
        "ChatImageUsage": _kept(openai, "CompletionUsage",
                                ("prompt_tokens", "completion_tokens", "total_tokens"),
                                {"cost": {"type": "number",
                                          "description": "OpenRouter's: what this key was "
                                                         "billed, in US dollars"}}),
        "CreateChatImageCompletionResponse": completion,
        "CreateChatImageCompletionChunk": chunk,
    }


def schemas(openai: Json, model: Json) -> Json:
    """The chat schemas, from OpenAI's (`openai`: its components' schemas)."""
    return {**_request(openai, model), **_response(openai)}


def paths() -> Json:
    headers = {**ours.RESPONSE_HEADERS, IGNORED_HEADER: {
        "schema": _STRING, "description": "the fields taken but not applied (sampling hints)"}}
    return {"/v1/chat/completions": {"post": {
        "operationId": "createChatCompletion", "tags": ["Chat"],
        "summary": "Switchyard: images from an image model through chat completions; one "
                   "choice per image. Models Switchyard does not serve are 404 "
                   "model_not_found.",
        "parameters": [ours.STRATEGY_PARAMETER, ours.IDEMPOTENCY_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": ours.ref("CreateChatImageCompletionRequest")}}},
        "responses": {"200": {
            "description": "a chat.completion; with `stream: true`, chat.completion.chunk "
                           "events, then `data: [DONE]` (an error after the first event "
                           "comes as an event holding OpenAI's error)",
            "headers": headers,
            "content": {
                "application/json": {"schema": ours.ref("CreateChatImageCompletionResponse")},
                "text/event-stream": {"schema": ours.json_events(
                    {"anyOf": [ours.ref("CreateChatImageCompletionChunk"),
                               ours.ref("ErrorResponse")]}, done="[DONE]")}}}}}}}
