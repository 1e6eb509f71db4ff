"""A host's 200 is not trusted in what it says beside its images: token counts that are
negative or past 64 bits, an id holding a NUL or that is not text, a revised prompt that is
not a string. None of them may bill below zero, end in a 500 after billing, lose the ledger
row, or break OpenAI's schema in the answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests import protocol_kit as kit
from tests.conftest import Running, make_config, serve, validate  # noqa: F401  (fixture)
from tests.databases import own_database
from tests.fakes.openai_images import image_b64
from tests.surfaces import ledger

OPENAI = """
[openai]
protocol = "openai_images"
base_url = "https://api.openai.test/v1"
key_env = "OPENAI_API_KEY"
timeout_s = 30
"""
GOOGLE = """
[google]
protocol = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"
"""
MODEL = """
name = "odd-image"
[capabilities]
aspect_ratios = ["1:1"]
max_n = 4

[[routes]]
provider = "{provider}"
upstream_model = "some-model"
price.per_token = {{ usd_per_million = 40, tokens = {{ "1K" = 1056 }} }}
"""
IMAGE = image_b64(1024, 1024, "png", "odd")
ONE_IMAGE = 1056 * 40  # micro-dollars: the route's price per image, where usage is no use


class OpenAIHost(httpx.AsyncBaseTransport):
    """An OpenAI-shaped host whose reply carries `extra` beside one real image."""

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}
        self.item: dict[str, Any] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = {"created": 1, "data": [{"b64_json": IMAGE, **self.item}], "size": "1024x1024",
                **self.extra}
        return httpx.Response(200, content=orjson.dumps(body),
                              headers={"content-type": "application/json"})


class GeminiHost(httpx.AsyncBaseTransport):
    """A Gemini API host whose reply carries `extra` beside one real image."""

    def __init__(self, **extra: Any) -> None:
        self.extra = extra

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = {"candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": IMAGE}}]},
            "finishReason": "STOP"}], **self.extra}
        return httpx.Response(200, content=orjson.dumps(body),
                              headers={"content-type": "application/json"})


@pytest.fixture
def host() -> OpenAIHost:
    return OpenAIHost()


@pytest.fixture
def running(tmp_path: Path, host: OpenAIHost) -> Iterator[Running]:
    with _serving(tmp_path, OPENAI, "openai", host) as running:
        yield running


def _serving(tmp_path: Path, providers: str, provider: str, host: httpx.AsyncBaseTransport,
             database_url: str | None = None) -> Any:
    catalog = kit.write_catalog(tmp_path / "routes", providers,
                                {"odd-image": MODEL.format(provider=provider)},
                                {"OPENAI_API_KEY": "k", "GEMINI_API_KEY": "k"})
    config = make_config(tmp_path / "data", **(
        {"database_url": database_url} if database_url else {}))
    return serve(config, catalog, {provider: host})


def _rows(running: Running) -> list[tuple[str, int, int, str | None]]:
    """(outcome, billed_micros, upstream_micros, upstream_id) of each ledger row."""
    with running.store() as store:
        return [tuple(row) for row in store.db.query(
            "SELECT outcome, billed_micros, upstream_micros, upstream_id FROM ledger")]


def _post(running: Running, path: str, body: dict[str, Any]) -> httpx.Response:
    key = running.new_key("odd")
    return httpx.post(running.base_url + path, json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}", "x-goog-api-key": key})


GENERATE = ("/v1/images/generations", {"model": "odd-image", "prompt": "x"})
CHAT = ("/v1/chat/completions", {"model": "odd-image",
                                 "messages": [{"role": "user", "content": "x"}]})


@pytest.mark.parametrize("path,body", [GENERATE, CHAT])
def test_an_input_token_count_past_64_bits_is_not_a_500_after_billing(
        running: Running, host: OpenAIHost, path: str, body: dict[str, Any]) -> None:
    host.extra = {"usage": {"input_tokens": 1e20, "output_tokens": 100,
                            "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}}}
    response = _post(running, path, body)
    assert response.status_code == 200, (response.text, ledger(running))
    assert [row.outcome for row in ledger(running)] == ["success"]


def test_an_output_token_count_past_64_bits_bills_the_price_per_image(
        running: Running, host: OpenAIHost) -> None:
    host.extra = {"usage": {"input_tokens": 1, "output_tokens": 1e20}}
    response = _post(running, *GENERATE)
    assert response.status_code == 200, (response.text, ledger(running))
    assert [row[:3] for row in _rows(running)] == [("success", ONE_IMAGE, ONE_IMAGE)]


def test_a_negative_token_count_never_bills_below_zero(running: Running,
                                                       host: OpenAIHost) -> None:
    host.extra = {"usage": {"input_tokens": 10, "output_tokens": -5_000_000,
                            "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}}
    response = _post(running, *GENERATE)
    assert response.status_code == 200, (response.text, ledger(running))
    (row,) = ledger(running)
    assert row.billed_micros == ONE_IMAGE, row
    assert response.json()["usage"]["output_tokens"] == 0


def test_a_negative_gemini_token_count_never_bills_below_zero(tmp_path: Path) -> None:
    host = GeminiHost(usageMetadata={
        "promptTokenCount": 10, "candidatesTokenCount": -1_000_000,
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": -1_000_000}]})
    with _serving(tmp_path, GOOGLE, "google", host) as running:
        response = _post(running, "/v1beta/models/odd-image:generateContent",
                         {"contents": [{"parts": [{"text": "x"}]}]})
        rows = ledger(running)
    assert response.status_code == 200, response.text
    assert [row.billed_micros for row in rows] == [ONE_IMAGE]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_an_upstream_id_with_a_nul_is_kept_without_it(tmp_path: Path, engine: str) -> None:
    host = OpenAIHost()
    host.extra = {"id": "img\u0000123"}
    with (own_database("untrusted_ids") if engine == "postgres" else nullcontext()) as url, \
            _serving(tmp_path, OPENAI, "openai", host, url) as running:
        response = _post(running, *GENERATE)
        rows = _rows(running)
    assert response.status_code == 200, (response.text, rows)
    assert [(row[0], row[3]) for row in rows] == [("success", "img123")]


def test_a_gemini_response_id_that_is_not_text_is_left_out(tmp_path: Path) -> None:
    with _serving(tmp_path, GOOGLE, "google", GeminiHost(responseId={"not": "text"})) as running:
        response = _post(running, *GENERATE)
        rows = _rows(running)
    assert response.status_code == 200, (response.text, rows)
    assert [(row[0], row[3]) for row in rows] == [("success", None)]


@pytest.mark.parametrize("path,schema", [(GENERATE, "ImagesResponse"),
                                         (CHAT, "CreateChatCompletionResponse")])
def test_a_revised_prompt_that_is_not_text_keeps_the_answer_to_the_spec(
        running: Running, host: OpenAIHost, path: tuple[str, dict[str, Any]], schema: str,
        validate: Callable[[str, Any], None]) -> None:  # noqa: F811  (the fixture)
    host.item = {"revised_prompt": {"text": ["not", "a", "string"]}}
    response = _post(running, *path)
    assert response.status_code == 200, response.text
    body = response.json()
    if schema == "ImagesResponse":
        body["data"][0]["b64_json"] = "x"
    else:
        body["choices"][0]["message"]["images"] = []
    validate(schema, body)
