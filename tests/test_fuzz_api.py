"""Every operation of Switchyard's OpenAPI document, fuzzed against a real server on SQLite and
on PostgreSQL (issue 18.5): no answer may be a 5xx, every 4xx must be OpenAI's error body, and
every answer must match the document.

Two passes. schemathesis draws valid and invalid requests from the document (property-based,
a bounded number per operation, with values that broke handlers before mixed into every
string and integer). Then every path and query parameter of every operation gets each of
those values in turn: schemathesis never puts control characters in a path, and a NUL in an
id was a 500 on PostgreSQL. SWITCHYARD_FUZZ_EXAMPLES and SWITCHYARD_FUZZ_SEED run it longer
or differently by hand; CI keeps the defaults (about a minute in all).
"""

from __future__ import annotations

import contextlib
import json
import os
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


@dataclass
class Target:
    base_url: str
    tenant: dict[str, str]
    admin: dict[str, str]

    def auth(self, path: str) -> dict[str, str]:
        return self.admin if path.startswith("/admin") else self.tenant


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


def assert_openai_error(status: int, content: bytes) -> None:
    """A 4xx is OpenAI's error object: message, type, param and code, nothing else."""
    if not 400 <= status < 500:
        return
    body = json.loads(content)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(body) == {"error"}, f"not an OpenAI error: {body}"
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str), error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


@schemathesis.check
def openai_error_body(ctx: Any, response: schemathesis.Response,
                      case: schemathesis.Case) -> bool | None:
    assert_openai_error(response.status_code, response.content)
    return True


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case: schemathesis.Case, target: Target) -> None:
    case.call_and_validate(base_url=target.base_url, headers=target.auth(case.path), timeout=30,
                           checks=[not_a_server_error, response_schema_conformance,
                                   openai_error_body])


def _parameters() -> list[tuple[str, str, str, str]]:
    """(method, path, location, name) of every path and query parameter in the document."""
    return [(method.upper(), path, parameter["in"], parameter["name"])
            for path, item in DOC["paths"].items() for method, operation in item.items()
            for parameter in operation.get("parameters", [])
            if parameter["in"] in ("path", "query")]


@pytest.mark.parametrize(("method", "path", "location", "name"), _parameters(),
                         ids=lambda v: str(v))
def test_every_parameter_takes_hostile_values(target: Target, method: str, path: str,
                                              location: str, name: str) -> None:
    with httpx.Client(base_url=target.base_url, headers=target.auth(path), timeout=30) as http:
        for value in map(str, HOSTILE):
            url, query = path, {}
            if location == "path":
                url = path.replace("{" + name + "}", quote(value, safe=""))
            else:
                query[name] = value
            for other in ("{provider}", "{token}", "{name}", "{key_id}", "{file_id}",
                          "{batch_id}", "{job_id}", "{model}"):
                url = url.replace(other, "x")
            response = http.request(method, url, params=query)
            assert response.status_code < 500, (method, url, query, response.text)
            assert_openai_error(response.status_code, response.content)
