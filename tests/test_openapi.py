"""Switchyard's OpenAPI document: served without a key, current with OpenAI's spec and our own
surface, and naming exactly the operations the app serves, on every client surface (OpenAI's,
chat completions and Gemini's)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from starlette.routing import Route

from proxy.api import openapi_build
from proxy.api.gemini import METHODS
from proxy.api.openapi_gemini import is_gemini
from proxy.app import build_app
from tests.conftest import Running, make_config
from tests.surfaces import picture

OPENAI_SPEC = Path(__file__).parents[2] / "shared" / "openai-openapi" / "openapi.json"
# Served, and not the document's: Prometheus' scrape (its own text format and token),
UNDOCUMENTED = {("GET", "/metrics")}
# and the console's page and its static files (HTML, CSS, JavaScript), not an API.
UNDOCUMENTED |= {("GET", "/console"), ("GET", "/console/{name}")}
# A model's Gemini methods are one route ({model} holds "name:method"), documented as Google
# writes them: a path per method.
METHOD_SUFFIX = re.compile(r"(?<=\}):(" + "|".join(METHODS) + ")$")


def test_the_document_is_served_without_a_key(server: Running) -> None:
    response = httpx.get(f"{server.base_url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == openapi_build.DOCUMENT.read_bytes()


def test_the_shipped_document_is_what_the_builder_makes() -> None:
    if not OPENAI_SPEC.exists():  # it lives beside the repository, not in it: a clone
        pytest.skip(f"OpenAI's spec is not at {OPENAI_SPEC} (beside the repository)")
    built = openapi_build.render(openapi_build.build(json.loads(OPENAI_SPEC.read_text())))
    assert built == openapi_build.DOCUMENT.read_text(), \
        "run: python -m proxy.api.openapi_build ../shared/openai-openapi/openapi.json"


def test_the_document_names_every_operation_served(tmp_path: Path) -> None:
    app = build_app(make_config(tmp_path))
    served = {(method, route.path) for route in app.routes if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"}
    document = json.loads(openapi_build.DOCUMENT.read_text())
    documented = {(method.upper(), METHOD_SUFFIX.sub("", path))
                  for path, item in document["paths"].items() for method in item}
    assert documented == served - UNDOCUMENTED


def test_every_gemini_method_is_documented_under_both_versions() -> None:
    paths = json.loads(openapi_build.DOCUMENT.read_text())["paths"]
    for version in ("v1beta", "v1"):
        for method in METHODS:
            assert set(paths[f"/{version}/models/{{model}}:{method}"]) == {"post"}
    stream = paths["/v1beta/models/{model}:streamGenerateContent"]["post"]
    alt = next(p for p in stream["parameters"] if p["name"] == "alt")
    assert (alt["in"], alt["required"], alt["schema"]) == \
        ("query", True, {"type": "string", "enum": ["sse"]})


def test_every_error_answer_is_in_its_surfaces_shape() -> None:
    """OpenAI's error body everywhere but on the Gemini surface, which answers Google's."""
    document = json.loads(openapi_build.DOCUMENT.read_text())
    for path, item in document["paths"].items():
        expected = "GoogleErrorResponse" if is_gemini(path) else "ErrorResponse"
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{expected}"}, path


@pytest.mark.parametrize(("path", "schema"), [
    ("/v1/images/generations", "ImageGenStreamEvent"),
    ("/v1/images/edits", "ImageEditStreamEvent"),
    ("/v1/chat/completions", "CreateChatImageCompletionChunk"),
    ("/v1beta/models/{model}:streamGenerateContent", "GeminiGenerateContentResponse"),
])
def test_streamed_answers_are_described(path: str, schema: str) -> None:
    document = json.loads(openapi_build.DOCUMENT.read_text())
    content = document["paths"][path]["post"]["responses"]["200"]["content"]
    data = content["text/event-stream"]["schema"]["properties"]["data"]
    assert f"#/components/schemas/{schema}" in json.dumps(data)


SCHEMA = schemathesis.openapi.from_path(str(openapi_build.DOCUMENT))
USER = [{"role": "user", "content": [{"type": "text", "text": "a lighthouse"}]}]
CONTENTS = [{"role": "user", "parts": [{"text": "a lighthouse"}]}]
PNG = "data:image/png;base64," + base64.b64encode(picture(64, 64)).decode()
# (method, documented path, the model it is asked of, body, query, status): each surface's
# answers, whole and streamed, and its errors.
ANSWERS: list[tuple[str, str, Any, dict[str, str], int]] = [
    ("POST", "/v1/chat/completions", {"model": "test-image", "messages": USER, "n": 2}, {}, 200),
    ("POST", "/v1/chat/completions", {"model": "test-image", "messages": USER, "n": 2,
                                      "stream": True}, {}, 200),
    ("POST", "/v1/chat/completions", {"model": "test-image", "messages": []}, {}, 400),
    ("POST", "/v1beta/models/{model}:generateContent", {"contents": CONTENTS}, {}, 200),
    ("POST", "/v1beta/models/{model}:streamGenerateContent",
     {"contents": CONTENTS, "generationConfig": {"candidateCount": 2}}, {"alt": "sse"}, 200),
    ("POST", "/v1/models/{model}:streamGenerateContent", {"contents": CONTENTS},
     {"alt": "sse"}, 200),
    ("POST", "/v1beta/models/{model}:generateContent", {"contents": []}, {}, 400),
    ("GET", "/v1beta/models", None, {}, 200),
    ("GET", "/v1beta/models/{model}", None, {}, 200),
    ("GET", "/v1beta/models/{model}", None, {"key": "sy-wrong"}, 400),
    ("POST", "/v1/images/generations", {"model": "test-image", "prompt": "x", "n": 2,
                                        "stream": True}, {}, 200),
    ("POST", "/v1/images/edits", {"model": "test-image", "prompt": "x", "stream": True,
                                  "images": [{"image_url": PNG}]}, {}, 200),
]


def answer(server: Running, key: str, method: str, path: str, body: Any,
           query: dict[str, str], model: str = "test-image") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-goog-api-key": key}
    if "key" in query or not is_gemini(path):
        del headers["x-goog-api-key"]
    return httpx.request(method, server.base_url + path.replace("{model}", model),
                         json=body, params=query, headers=headers, timeout=30)


@pytest.mark.parametrize(("method", "path", "body", "query", "status"), ANSWERS,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_served_answers_match_the_document(server: Running, method: str, path: str,
                                           body: Any, query: dict[str, str],
                                           status: int) -> None:
    """Streamed answers event by event, each event's data against the document's schema."""
    response = answer(server, server.new_key(), method, path, body, query)
    assert response.status_code == status, response.text
    streamed = isinstance(body, dict) and (body.get("stream") or "alt" in query)
    if status == 200:
        assert response.headers["content-type"].startswith(
            "text/event-stream" if streamed else "application/json")
    SCHEMA[path][method].validate_response(response)


@pytest.mark.parametrize(("path", "body", "query", "real", "wrong"), [
    ("/v1/chat/completions", {"model": "test-image", "messages": USER, "stream": True}, {},
     '"object":"chat.completion.chunk"', '"object":"chat.completion"'),
    ("/v1beta/models/{model}:streamGenerateContent", {"contents": CONTENTS}, {"alt": "sse"},
     '"role":"model"', '"role":"user"'),
    ("/v1/images/generations", {"model": "test-image", "prompt": "x", "stream": True}, {},
     '"type":"image_generation.completed"', '"type":"image_edit.completed"'),
])
def test_an_event_unlike_the_document_is_caught(server: Running, path: str, body: Any,
                                                query: dict[str, str], real: str,
                                                wrong: str) -> None:
    """The check above reads every event: one event off the document fails it."""
    response = answer(server, server.new_key(), "POST", path, body, query)
    assert real in response.text
    SCHEMA[path]["POST"].validate_response(response)
    tampered = httpx.Response(200, headers={"content-type": response.headers["content-type"]},
                              content=response.text.replace(real, wrong, 1).encode(),
                              request=response.request)
    tampered.elapsed = response.elapsed
    with pytest.raises(AssertionError):
        SCHEMA[path]["POST"].validate_response(tampered)


@pytest.mark.parametrize(("path", "body", "query"), [
    ("/v1/chat/completions", {"model": "test-down", "messages": USER, "stream": True}, {}),
    ("/v1beta/models/{model}:streamGenerateContent", {"contents": CONTENTS}, {"alt": "sse"}),
    ("/v1/images/generations", {"model": "test-down", "prompt": "x", "stream": True}, {}),
])
def test_an_error_after_the_stream_began_is_described(
        slow: Running, keepalive: float, path: str, body: Any, query: dict[str, str]) -> None:
    """Every route of test-down fails after the first keep-alive: an event holds the error."""
    response = answer(slow, slow.new_key(), "POST", path, body, query, model="test-down")
    assert response.status_code == 200 and '"error"' in response.text, response.text
    SCHEMA[path]["POST"].validate_response(response)
