"""Every operation of Switchyard's OpenAPI document, fuzzed against a real server on SQLite and
on PostgreSQL (issue 18.5): no answer may be a 5xx, every 4xx must be its surface's error body
(OpenAI's, or Google's on the Gemini surface), and every answer must match the document,
streamed answers event by event.

Two passes. schemathesis draws valid and invalid requests from the document (property-based,
a bounded number per operation, with values that broke handlers before mixed into every
string and integer; on the chat and Gemini surfaces, whose handlers look the model up before
they read the body, the model is mostly one the test catalog serves, so the bodies are read and
answered: reach_the_answer). Then every path and query parameter of every operation gets each of
those values in turn: schemathesis never puts control characters in a path, and a NUL in an
id was a 500 on PostgreSQL. SWITCHYARD_FUZZ_EXAMPLES and SWITCHYARD_FUZZ_SEED run it longer
or differently by hand; CI keeps the defaults (about a minute in all).
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from proxy.api.openapi_build import DOCUMENT
from proxy.api.openapi_gemini import is_gemini
from tests.conftest import make_config, serve
from tests.databases import own_database

ADMIN_KEY = "admin-key-for-the-fuzzer"
EXAMPLES = int(os.environ.get("SWITCHYARD_FUZZ_EXAMPLES", "10"))  # per operation and database
SEED = int(os.environ.get("SWITCHYARD_FUZZ_SEED", "185"))  # fixed: CI fails on code, not luck
# NUL (PostgreSQL's text refuses it), digits int() refuses, numbers past what the columns hold.
HOSTILE = ["a\x00b", "\x00", "²", "--5", "9" * 5000, "1e300", "-2", "{}", 2**40, 10**300]
CONFIG = schemathesis.Config.from_dict({
    "seed": SEED,
    "dictionaries": {"hostile": {"values": HOSTILE}},
    "generation": {"max-examples": EXAMPLES, "mode": "all", "dictionaries": {
        "string": {"dictionary": "hostile", "probability": 0.5},
        "integer": {"dictionary": "hostile", "probability": 0.5}}},
})
SCHEMA = schemathesis.openapi.from_path(str(DOCUMENT), config=CONFIG)
DOC = json.loads(DOCUMENT.read_text())
# Models of the test catalog that every route serves (test-down's fail: a 5xx by design).
SERVED = ("test-image", "test-image:fastest")


@dataclass
class Target:
    base_url: str
    tenant: dict[str, str]
    admin: dict[str, str]

    def auth(self, path: str) -> dict[str, str]:
        if path.startswith("/admin"):
            return self.admin
        if is_gemini(path):  # the key as google-genai sends it
            return {"x-goog-api-key": self.tenant["authorization"].removeprefix("Bearer ")}
        return self.tenant


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with contextlib.ExitStack() as stack:
        extra = {}
        if request.param == "postgres":
            extra["database_url"] = stack.enter_context(own_database("fuzz"))
        config = make_config(tmp_path_factory.mktemp("data"), admin_key=ADMIN_KEY, **extra)
        running = stack.enter_context(serve(config))
        yield Target(running.base_url,
                     {"authorization": f"Bearer {running.new_key('fuzz')}"},
                     {"authorization": f"Bearer {ADMIN_KEY}"})


def assert_error(path: str, status: int, content: bytes) -> None:
    """A 4xx is one error object in its surface's shape: OpenAI's (message, type, param and
    code, nothing else), or on the Gemini surface Google's (code, message, status name)."""
    if not 400 <= status < 500:
        return
    body = json.loads(content)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(body) == {"error"}, f"not an error body: {body}"
    assert isinstance(error["message"], str) and error["message"], error
    if is_gemini(path):
        assert set(error) <= {"code", "message", "status", "details"}, error
        assert error["code"] == status, error
        assert isinstance(error["status"], str) and error["status"].isupper(), error
        return
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["type"], str), error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


@schemathesis.check
def surface_error_body(ctx: Any, response: schemathesis.Response,
                       case: schemathesis.Case) -> bool | None:
    assert_error(case.path, response.status_code, response.content)
    return True


def reach_the_answer(case: schemathesis.Case) -> None:
    """On the chat and Gemini surfaces, a case that gets past the checks before the body's:
    their handlers look the model up first, so the model is one the test catalog serves in two
    cases of three (the drawn one in the rest, chosen by its value: a run is repeatable); and a
    streamed request takes no Idempotency-Key (tests/test_e2e_streams.py checks that refusal),
    so a streamed case is sent without one; and half the chat cases leave out `route`, whose
    drawn constraints no route meets (the images API's cases fuzz it). Every phase's cases then
    reach the body's checks, and the valid ones an answer, checked against the document."""
    chat = case.path == "/v1/chat/completions"
    if not (chat or is_gemini(case.path)):
        return
    body = case.body if isinstance(case.body, dict) else {}
    drawn = body.get("model") if chat else (case.path_parameters or {}).get("model")
    choice = zlib.crc32(repr(drawn).encode()) % (len(SERVED) + 1)
    if choice < len(SERVED) and chat and body:
        case.body = {**body, "model": SERVED[choice]}
        if zlib.crc32(repr(body).encode()) % 2:  # routing is fuzzed on images
            case.body.pop("route", None)
    elif choice < len(SERVED) and "model" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "model": SERVED[choice]}
    if body.get("stream") is True or case.path.endswith(":streamGenerateContent"):
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "idempotency-key"}


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case: schemathesis.Case, target: Target) -> None:
    reach_the_answer(case)
    case.call_and_validate(base_url=target.base_url, headers=target.auth(case.path), timeout=30,
                           checks=[not_a_server_error, response_schema_conformance,
                                   surface_error_body])


def _parameters() -> list[tuple[str, str, str, str]]:
    """(method, path, location, name) of every path and query parameter in the document, and
    `key` (the Gemini surface's key as a query parameter) on the Gemini and chat surfaces: on
    chat, where a Google-style key once made the errors Google's, it must change nothing."""
    keyed = {path for path in DOC["paths"] if is_gemini(path)} | {"/v1/chat/completions"}
    return [(method.upper(), path, parameter["in"], parameter["name"])
            for path, item in DOC["paths"].items() for method, operation in item.items()
            for parameter in [*operation.get("parameters", []),
                              *([{"in": "query", "name": "key"}] if path in keyed else [])]
            if parameter["in"] in ("path", "query")]


@pytest.mark.parametrize(("method", "path", "location", "name"), _parameters(),
                         ids=lambda v: str(v))
def test_every_parameter_takes_hostile_values(target: Target, method: str, path: str,
                                              location: str, name: str) -> None:
    gemini_key = name == "key" and is_gemini(path)  # the tenant key itself
    headers = {} if gemini_key else target.auth(path)
    with httpx.Client(base_url=target.base_url, headers=headers, timeout=30) as http:
        for value in map(str, HOSTILE):
            url, query = path, {}
            if location == "path":
                url = path.replace("{" + name + "}", quote(value, safe=""))
            else:
                query[name] = value
            url = url.replace("{model}", SERVED[0])  # so that the query is read
            for other in ("{provider}", "{token}", "{name}", "{key_id}", "{file_id}",
                          "{batch_id}", "{job_id}"):
                url = url.replace(other, "x")
            response = http.request(method, url, params=query)
            assert response.status_code < 500, (method, url, query, response.text)
            assert_error(path, response.status_code, response.content)
