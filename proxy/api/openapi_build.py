"""Builds Switchyard's OpenAPI document, proxy/api/openapi.json (served at GET /openapi.json):
the operations of OpenAI's spec that we serve, restricted to what we accept, plus our own
(openapi_ours.py), chat completions (openapi_chat.py) and Gemini's API (openapi_gemini.py).
Run it when any changes; tests/test_openapi.py checks the shipped copy is what this builds:

    python -m proxy.api.openapi_build ../shared/openai-openapi/openapi.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.api import openapi_chat as chat
from proxy.api import openapi_gemini as gemini
from proxy.api import openapi_ours as ours
from proxy.api.batch_inputs import ENDPOINTS
from proxy.api.openai_schema import MAX_PROMPT

Json = dict[str, Any]
DOCUMENT = Path(__file__).with_name("openapi.json")
# OpenAI's operations we serve: path (under /v1) -> methods.
OPENAI: dict[str, tuple[str, ...]] = {
    "/images/generations": ("post",), "/images/edits": ("post",), "/models": ("get",),
    "/models/{model}": ("get",), "/files": ("post",), "/files/{file_id}": ("get",),
    "/files/{file_id}/content": ("get",), "/batches": ("get", "post"),
    "/batches/{batch_id}": ("get",), "/batches/{batch_id}/cancel": ("post",)}
_KEPT = ("operationId", "tags", "summary", "parameters", "requestBody", "responses")
_MODEL = {"type": "string", "minLength": 1,
          "description": "Switchyard: one of the models GET /v1/models lists (a ':cheapest', "
                         "':fastest', … suffix picks the routing strategy)."}
_SIZE = {"type": "string", "description": "`auto` or WIDTHxHEIGHT: Switchyard serves the "
                                          "nearest shape and tier the model has, and says so "
                                          "in x-switchyard-size headers."}

# An operation's 4xx answers: OpenAI's error body, or Google's on the Gemini surface.
_ERRORS = {False: ours.response(ours.ref("ErrorResponse"), "an error, in OpenAI's shape"),
           True: ours.response(ours.ref("GoogleErrorResponse"), "an error, in Google's shape")}


def build(openai: Json) -> Json:
    paths = {f"/v1{path}": {method: _operation(openai["paths"][path][method])
                            for method in methods} for path, methods in OPENAI.items()}
    _restrict_paths(paths)
    paths.update({**ours.paths(), **chat.paths(), **gemini.paths()})
    for path, item in paths.items():
        error = _ERRORS[gemini.is_gemini(path)]
        for operation in item.values():
            for status in ours.ERRORS:
                operation["responses"].setdefault(status, copy.deepcopy(error))
    openai_schemas = copy.deepcopy(openai["components"]["schemas"])
    available = {**openai_schemas, **ours.schemas(), **chat.schemas(openai_schemas, _MODEL),
                 **gemini.schemas()}
    _restrict_schemas(available)
    schemas = _closure(available, _refs(paths))
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchyard", "version": __version__,
                 "description": "An OpenAI-compatible routing proxy for image generation. "
                                "Operations under /v1 are OpenAI's (spec "
                                f"{openai['info']['version']}), restricted to what Switchyard "
                                "serves; what is marked 'Switchyard:' is ours. Chat "
                                "completions serve the image models in the shape OpenRouter "
                                "set for image output; under /v1beta (and its methods under "
                                "/v1) is Gemini's own API, in Google's shapes and errors, "
                                "for the google-genai SDK."},
        "servers": [{"url": "/"}],
        "security": [{"TenantKey": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "TenantKey": {"type": "http", "scheme": "bearer",
                          "description": "a tenant key (switchyard keys create NAME)"},
            "AdminKey": {"type": "http", "scheme": "bearer",
                         "description": "the admin key (admin_key / SWITCHYARD_ADMIN_KEY)"},
            **gemini.SECURITY_SCHEMES}},
    }


def _operation(operation: Json) -> Json:
    return copy.deepcopy({k: v for k, v in operation.items() if k in _KEPT})


def _restrict_paths(paths: Json) -> None:
    for path, kind, events in (("/v1/images/generations", "image_generation",
                                "ImageGenStreamEvent"),
                               ("/v1/images/edits", "image_edit", "ImageEditStreamEvent")):
        operation = paths[path]["post"]
        operation["parameters"] = [ours.STRATEGY_PARAMETER, ours.PREFER_PARAMETER,
                                   ours.IDEMPOTENCY_PARAMETER]
        ok = ours.response(ours.ref("ImagesResponse"), "the images; with `stream: true`, "
                                                       "OpenAI's events (an error after the "
                                                       "first event comes as an `error` event)")
        ok["content"]["text/event-stream"] = {"schema": ours.json_events(
            {"anyOf": [ours.ref(events), ours.ref("ErrorResponse")]},
            event={"type": "string", "enum": [f"{kind}.partial_image", f"{kind}.completed",
                                              "error"]})}
        operation["responses"] = {
            "200": {**ok, "headers": ours.RESPONSE_HEADERS},
            "202": ours.response(ours.ref("ImageJob"), "queued (Prefer: respond-async or "
                                                    "callback_url; JSON bodies only)")}
    paths["/v1/files/{file_id}/content"]["get"]["responses"]["200"] = {
        "description": "the file's JSONL", "content": {"application/jsonl": {"schema": {
            "type": "string"}}}}
    for parameter in paths["/v1/batches"]["get"]["parameters"]:
        if parameter["name"] == "limit":
            parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": 100,
                                   "default": 20}


def _restrict_schemas(schemas: Json) -> None:
    common = {**ours.IMAGE_EXTENSIONS, "model": _MODEL, "size": _SIZE}
    for name, extra in (("CreateImageRequest", ours.ASYNC_EXTENSIONS),
                        ("EditImageBodyJsonParam", ours.ASYNC_EXTENSIONS),
                        ("CreateImageEditRequest", {"route": {
                            "type": "string", "description": "Switchyard: RoutePolicy as "
                                                             "JSON text"}})):
        schema = schemas[name]
        schema["properties"].update({**common, **extra})
        if name == "CreateImageEditRequest":  # a form field is one string, not a list
            del schema["properties"]["image_urls"]
        schema["properties"]["prompt"] = {"type": "string", "minLength": 1,
                                          "maxLength": MAX_PROMPT}
        schema["required"] = sorted({*schema["required"], "model"})
        schema["additionalProperties"] = False  # unknown fields are refused, by name
    schemas["ImageRefParam"] = {
        "type": "object", "required": ["image_url"], "additionalProperties": False,
        "description": "Switchyard: an image by https:// or data: URL (file ids are not "
                       "served)",
        "properties": {"image_url": {"type": "string", "maxLength": 20_971_520}}}
    schemas["CreateFileRequest"]["properties"]["purpose"] = {"type": "string",
                                                             "enum": ["batch"]}
    schemas["CreateFileRequest"]["properties"]["expires_after"]["description"] = \
        "Switchyard does not expire files: a valid policy is refused (400), not ignored."
    batch = schemas["CreateBatchRequest"]
    batch["properties"]["endpoint"] = {"type": "string", "enum": list(ENDPOINTS)}
    batch["additionalProperties"] = False


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _closure(schemas: Json, roots: set[str]) -> Json:
    """The named schemas and every schema they reference, transitively."""
    wanted: Json = {}
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted[name] = copy.deepcopy(schemas[name])
            todo.extend(_refs(schemas[name]))
    return dict(sorted(wanted.items()))


def render(document: Json) -> str:
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    DOCUMENT.write_text(render(build(json.loads(Path(sys.argv[1]).read_text()))))
    print(f"wrote {DOCUMENT}")
