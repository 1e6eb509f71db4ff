"""Gemini's own API (proxy/api/gemini.py) for the OpenAPI document, as data: Google's request,
response, model and error shapes, restricted to what gemini_schema.py accepts.

The methods are written as Google writes them, `/v1beta/models/{model}:generateContent`: the
template's parameter is the model alone, and the method a literal after it (schemathesis
fills such a template as it should). The same methods are served under /v1, where
google-genai's v1 client puts them; GET /v1/models answers Google's list only to a caller
with Google's style of key, so the document describes OpenAI's list there.
"""

from __future__ import annotations

from typing import Any

from proxy.api.errors import GOOGLE_METHODS, google_status
from proxy.api.gemini import MAX_PAGE, METHODS
from proxy.api.gemini_schema import CONFIG_HINTS, IMAGE_SIZES, MAX_CANDIDATES, THRESHOLDS
from proxy.api.openapi_ours import TEXT, json_events, ref, response
from proxy.domain import ASPECT_RATIOS

Json = dict[str, Any]
_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}
SECURITY: list[Json] = [{"GoogleApiKey": []}, {"GoogleApiKeyQuery": []}]
SECURITY_SCHEMES: Json = {
    "GoogleApiKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key",
                     "description": "a tenant key, as google-genai sends it"},
    "GoogleApiKeyQuery": {"type": "apiKey", "in": "query", "name": "key",
                          "description": "a tenant key, as the REST examples send it"}}
_HINT_SCHEMAS: Json = {
    "temperature": {"type": "number"}, "topP": {"type": "number"}, "topK": _INTEGER,
    "maxOutputTokens": _INTEGER, "stopSequences": {"type": "array", "items": _STRING},
    "presencePenalty": {"type": "number"}, "frequencyPenalty": {"type": "number"},
    "thinkingConfig": {"type": "object"}, "mediaResolution": _STRING,
    "enableEnhancedCivicAnswers": {"type": "boolean"}, "responseMimeType": _STRING}


def _object(properties: Json, required: tuple[str, ...] = (), description: str = "") -> Json:
    schema: Json = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _config() -> Json:
    """generationConfig: what shapes the images, and the hints taken but not applied."""
    image_config = _object({"aspectRatio": {"type": "string", "enum": list(ASPECT_RATIOS)},
                            "imageSize": {"type": "string", "enum": list(IMAGE_SIZES)}})
    return _object({
        "responseModalities": {"type": "array", "items": {"type": "string",
                                                          "enum": ["TEXT", "IMAGE"]},
                               "contains": {"const": "IMAGE"},
                               "description": "must include IMAGE; TEXT lets the answer "
                                              "carry the host's words"},
        "imageConfig": image_config,
        "candidateCount": {"type": "integer", "minimum": 1, "maximum": MAX_CANDIDATES,
                           "description": "how many images (one candidate each)"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        **{name: _HINT_SCHEMAS[name] for name in CONFIG_HINTS}},
        description="Hints no image host takes (temperature…) are accepted and named in the "
                    "x-switchyard-ignored header.")


def _request_schemas() -> Json:
    kinds = {
        "text": TEXT,
        "inlineData": _object({"mimeType": _STRING, "displayName": _STRING,
                               "data": {"type": "string", "contentEncoding": "base64",
                                        "minLength": 1,
                                        "description": "a PNG, JPEG or WebP image"}},
                              ("data",)),
        "fileData": _object({"mimeType": _STRING, "displayName": _STRING,
                             "fileUri": {"type": "string", "pattern": "^(https://|data:)",
                                         "description": "an https:// or data: URL"}},
                            ("fileUri",))}
    thought = {"thought": {"type": "boolean"}, "thoughtSignature": _STRING}
    part = {"oneOf": [_object({name: schema, **thought}, (name,)) for name, schema in
                      kinds.items()],
            "description": "Exactly one of text, inlineData, fileData (thought parts are left "
                           "out)."}
    content = _object({"role": {"type": "string", "enum": ["user", "model"]},
                       "parts": {"type": "array", "minItems": 1,
                                 "items": ref("GeminiPart")}}, ("parts",),
                      "A turn. The user turns' text is the prompt (a conversation without any "
                      "is refused); every image is a reference image.")
    safety = _object({"category": {"type": "string", "pattern": "^HARM_CATEGORY_"},
                      "threshold": {"type": "string", "enum": sorted(THRESHOLDS)},
                      "method": _STRING}, ("category", "threshold"))
    request = _object({
        "contents": {"type": "array", "minItems": 1, "items": ref("GeminiContent")},
        "systemInstruction": _object({
            "role": _STRING, "parts": {"type": "array", "items": _object({"text": _STRING},
                                                                         ("text",))}},
            ("parts",), "text only"),
        "generationConfig": ref("GeminiGenerationConfig"),
        "safetySettings": {"type": "array", "items": safety,
                           "description": "checked, then left to the hosts' own filters "
                                          "(named in x-switchyard-ignored)"},
        "serviceTier": _STRING, "store": {"type": "boolean"},
        "labels": {"type": "object", "additionalProperties": _STRING}}, ("contents",),
        "Google's GenerateContentRequest for the image models. Fields may also be written in "
        "snake_case (proto3 JSON). The prompt is the system instruction and the user turns' "
        "text; the reference images are every image in the conversation. Tools, cached "
        "content, structured or speech output are refused (400).")
    return {"GeminiGenerateContentRequest": request, "GeminiContent": content,
            "GeminiPart": part, "GeminiGenerationConfig": _config()}


def _response_schemas() -> Json:
    part = {"type": "object", "properties": {
        "text": _STRING,
        "inlineData": {"type": "object", "required": ["mimeType", "data"],
                       "properties": {"mimeType": _STRING, "data": _STRING}}}}
    candidate = {"type": "object", "required": ["content", "finishReason", "index"],
                 "properties": {
                     "content": {"type": "object", "required": ["role", "parts"],
                                 "properties": {"role": {"type": "string", "enum": ["model"]},
                                                "parts": {"type": "array", "items": part}}},
                     "finishReason": _STRING, "index": _INTEGER}}
    details = {"type": "array", "items": {
        "type": "object", "required": ["modality", "tokenCount"],
        "properties": {"modality": {"type": "string", "enum": ["TEXT", "IMAGE"]},
                       "tokenCount": _INTEGER}}}
    usage = {"type": "object",
             "required": ["promptTokenCount", "candidatesTokenCount", "totalTokenCount"],
             "properties": {"promptTokenCount": _INTEGER, "candidatesTokenCount": _INTEGER,
                            "totalTokenCount": _INTEGER, "promptTokensDetails": details,
                            "candidatesTokensDetails": details}}
    response = {"type": "object", "required": ["candidates", "modelVersion", "responseId"],
                "description": "One candidate per image. Streamed, each event carries one "
                               "candidate; the last also the usage and, in `switchyard`, what "
                               "the x-switchyard-* headers of a plain answer say.",
                "properties": {"candidates": {"type": "array", "items": candidate},
                               "usageMetadata": usage, "modelVersion": _STRING,
                               "responseId": _STRING,
                               "switchyard": {"type": "object",
                                              "additionalProperties": _STRING}}}
    model = {"type": "object", "required": ["name", "supportedGenerationMethods"],
             "properties": {"name": {"type": "string", "pattern": "^models/"},
                            "version": _STRING, "displayName": _STRING, "description": _STRING,
                            "supportedGenerationMethods": {
                                "type": "array", "items": {"type": "string",
                                                           "enum": list(METHODS)}}}}
    models = {"type": "object", "required": ["models"],
              "properties": {"models": {"type": "array", "items": ref("GeminiModel")},
                             "nextPageToken": _STRING}}
    return {"GeminiGenerateContentResponse": response, "GeminiModel": model,
            "GeminiModelList": models}


def _error_schema() -> Json:
    return {"type": "object", "required": ["error"], "additionalProperties": False,
            "description": "Google's error (google.rpc.Status), as the Gemini API sends it",
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "status"],
                "properties": {
                    "code": _INTEGER, "message": {"type": "string", "minLength": 1},
                    "status": {"type": "string", "enum": sorted({
                        google_status(code) for code in (400, 401, 403, 404, 405, 409, 413,
                                                         415, 429, 499, 500, 501, 503, 504)})},
                    "details": {"type": "array", "items": {
                        "type": "object", "required": ["@type"],
                        "properties": {"@type": _STRING}}}}}}}


def schemas() -> Json:
    return {**_request_schemas(), **_response_schemas(), "GoogleErrorResponse": _error_schema()}


def _model_parameter(description: str) -> Json:
    return {"in": "path", "name": "model", "required": True, "schema": _STRING,
            "description": description}


def _generate(version: str, method: str) -> Json:
    stream = method == "streamGenerateContent"
    ok = response(ref("GeminiGenerateContentResponse"))
    parameters = [_model_parameter("a model GET /v1beta/models lists (without its models/ "
                                   "prefix; a ':cheapest', ':fastest', … suffix picks the "
                                   "routing strategy)")]
    if stream:
        parameters.append({"in": "query", "name": "alt", "required": True,
                           "schema": {"type": "string", "enum": ["sse"]},
                           "description": "served as server-sent events only"})
        ok = {"description": "server-sent events, one GenerateContentResponse each",
              "content": {"text/event-stream": {"schema": json_events(
                  {"anyOf": [ref("GeminiGenerateContentResponse"),
                             ref("GoogleErrorResponse")]})}}}
    return {"operationId": f"gemini{method[0].upper()}{method[1:]}"
                           f"{'' if version == 'v1beta' else 'V1'}",
            "tags": ["Gemini"], "security": SECURITY, "parameters": parameters,
            "summary": f"Gemini's {method}, for the image models (any host may serve it)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": ref("GeminiGenerateContentRequest")}}},
            "responses": {"200": ok}}


def paths() -> Json:
    """Gemini's operations, their 4xx answers not yet added (openapi_build adds Google's)."""
    found: Json = {
        "/v1beta/models": {"get": {
            "operationId": "geminiListModels", "tags": ["Gemini"], "security": SECURITY,
            "summary": "The key's image models, in Google's shape",
            "parameters": [
                {"in": "query", "name": "pageSize", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE}},
                {"in": "query", "name": "pageToken", "required": False, "schema": _STRING,
                 "description": "the nextPageToken of the page before"}],
            "responses": {"200": response(ref("GeminiModelList"))}}},
        "/v1beta/models/{model}": {"get": {
            "operationId": "geminiGetModel", "tags": ["Gemini"], "security": SECURITY,
            "parameters": [_model_parameter("a model's name (aliases resolve)")],
            "responses": {"200": response(ref("GeminiModel"))}}},
    }
    for version in ("v1beta", "v1"):
        for method in METHODS:
            found[f"/{version}/models/{{model}}:{method}"] = {"post": _generate(version, method)}
    return found


def is_gemini(path: str) -> bool:
    """Whether a documented path is the Gemini surface's (its errors are Google's)."""
    return path.startswith("/v1beta/") or path.endswith(GOOGLE_METHODS)
