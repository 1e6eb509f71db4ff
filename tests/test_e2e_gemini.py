"""Gemini's own API end to end: the real google-genai SDK (and Google's documented request
bodies, sent raw) against a real Switchyard on the simulated test catalog. Answers are
GenerateContentResponses billed like any image request; bad input is Google's error shape,
naming the field, billed nothing."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from google.genai import errors, types

from proxy import geometry
from proxy.billing.keys import KeyLimits
from tests.conftest import Running
from tests.surfaces import gemini, key_id, ledger, opened, picture

GENERATE = "/v1beta/models/test-image:generateContent"


def post(server: Running, path: str, body: Any, key: str | None,
         **params: str) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    return httpx.post(server.base_url + path, json=body, headers=headers, params=params,
                      timeout=30)


@pytest.mark.parametrize("api_version", [None, "v1beta"])  # the SDK's default is v1
def test_generate_content_answers_a_candidate_per_image(
        server: Running, api_key: str, api_version: str | None) -> None:
    client = gemini(server, api_key, api_version)
    response = client.models.generate_content(
        model="test-image", contents="a lighthouse at dawn",
        config=types.GenerateContentConfig(
            # A seed of its own per version: a repeat would be answered from the response
            # cache (sim-cheap honours seeds), not by the host.
            response_modalities=["IMAGE"], candidate_count=2,
            seed=7 if api_version is None else 8,
            image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K")))
    assert response.candidates is not None and len(response.candidates) == 2
    for index, candidate in enumerate(response.candidates):
        assert candidate.index == index and candidate.finish_reason == types.FinishReason.STOP
        assert candidate.content is not None and candidate.content.role == "model"
        (part,) = candidate.content.parts or []
        assert part.inline_data is not None and part.inline_data.mime_type == "image/png"
        image = opened(part.inline_data.data or b"")
        assert image.format == "PNG" and image.size == geometry.pixels("16:9", "2K")
    headers = response.sdk_http_response.headers if response.sdk_http_response else {}
    assert headers is not None
    assert headers["x-switchyard-provider"] == "sim-cheap"
    assert headers["x-switchyard-aspect-ratio"] == "16:9"
    assert headers["x-switchyard-resolution"] == "2K"
    assert response.model_version == "test-image"
    assert response.response_id == headers["x-request-id"]
    assert response.usage_metadata is not None  # per-image hosts report no tokens: zeros
    assert response.usage_metadata.total_token_count == 0
    row = next(r for r in ledger(server) if r.request_id == response.response_id)
    assert (row.key_id, row.outcome, row.n_delivered) == (key_id(server, api_key), "success", 2)
    assert row.billed_micros == 80_000 == round(float(headers["x-switchyard-billed-usd"]) * 1e6)


def test_an_image_part_makes_it_an_edit_that_keeps_the_input_shape(
        server: Running, api_key: str) -> None:
    # google-genai sends bytes as URL-safe base64; no aspectRatio asked: the input's shape.
    client = gemini(server, api_key)
    response = client.models.generate_content(
        model="test-image", contents=[
            types.Part.from_bytes(data=picture(48, 32), mime_type="image/png"),
            "make the sky purple"])
    headers = response.sdk_http_response.headers if response.sdk_http_response else None
    assert headers is not None and headers["x-switchyard-provider"] == "sim-cheap"
    assert response.candidates and response.candidates[0].content
    part = (response.candidates[0].content.parts or [])[0]
    assert part.inline_data and opened(part.inline_data.data or b"").format == "PNG"


def test_streamed_content_comes_as_server_sent_events(server: Running, api_key: str) -> None:
    client = gemini(server, api_key)
    chunks = list(client.models.generate_content_stream(
        model="test-image", contents="a red fox",
        config=types.GenerateContentConfig(candidate_count=2)))
    assert len(chunks) == 2  # a chunk per image
    images = [p.inline_data.data for c in chunks for cand in c.candidates or []
              for p in (cand.content.parts if cand.content else None) or [] if p.inline_data]
    assert len(images) == 2 and all(opened(d or b"").format == "PNG" for d in images)
    assert [cand.index for c in chunks for cand in c.candidates or []] == [0, 1]
    assert chunks[0].usage_metadata is None and chunks[-1].usage_metadata is not None
    # The run ended before a keep-alive was due: the headers say who served it, as for
    # a plain answer.
    headers = chunks[0].sdk_http_response.headers if chunks[0].sdk_http_response else None
    assert headers is not None and headers["x-switchyard-provider"] == "sim-cheap"
    assert headers["content-type"].startswith("text/event-stream")


def test_the_raw_stream_ends_with_what_the_headers_say(server: Running, api_key: str) -> None:
    answer = post(server, "/v1beta/models/test-image:streamGenerateContent",
                  {"contents": [{"parts": [{"text": "a red fox"}]}]}, api_key, alt="sse")
    assert answer.status_code == 200
    events = [line for line in answer.text.split("\r\n\r\n") if line]
    assert len(events) == 1 and events[0].startswith("data: ")
    last = httpx.Response(200, content=events[0].removeprefix("data: ")).json()
    assert last["switchyard"]["provider"] == answer.headers["x-switchyard-provider"]
    assert last["switchyard"]["billed_usd"] == answer.headers["x-switchyard-billed-usd"]


def test_the_key_may_come_as_a_query_parameter(server: Running, api_key: str) -> None:
    answer = httpx.post(f"{server.base_url}{GENERATE}?key={api_key}",
                        json={"contents": [{"parts": [{"text": "a red fox"}]}]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]


def test_google_documented_requests_are_served(server: Running, api_key: str) -> None:
    """Example 1 and 2 of Google's image-generation docs (§2.3 of the provider notes), with
    real images for the docs' elided base64, and the snake_case spelling the REST API takes."""
    text_to_image = {
        "contents": [{"role": "user", "parts": [
            {"text": "A nano banana dish in a fancy restaurant with a Gemini theme"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                             "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
                             "candidateCount": 1}}
    edit = {
        "contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": "image/png",
                            "data": base64.b64encode(picture(32, 32)).decode()}},
            {"inlineData": {"mimeType": "image/jpeg",
                            "data": base64.b64encode(picture(40, 30, "JPEG")).decode()}},
            {"text": "Put the product from the first image on the table in the second image. "
                     "Keep the label text unchanged."}]}],
        "generationConfig": {"responseModalities": ["IMAGE"],
                             "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"}}}
    snake = {"contents": [{"parts": [{"inline_data": {
                 "mime_type": "image/png", "data": base64.b64encode(picture(8, 8)).decode()}},
                 {"text": "the same, in blue"}]}],
             "generation_config": {"response_modalities": ["image", "text"],
                                   "image_config": {"aspect_ratio": "3:2"}}}
    for body, size in ((text_to_image, geometry.pixels("16:9", "2K")),
                       (edit, geometry.pixels("1:1", "1K")),
                       (snake, geometry.pixels("3:2", "1K"))):
        answer = post(server, GENERATE, body, api_key)
        assert answer.status_code == 200, answer.text
        (candidate,) = answer.json()["candidates"]
        data = candidate["content"]["parts"][-1]["inlineData"]["data"]
        assert opened(base64.b64decode(data)).size == size


def test_models_lists_the_keys_image_models_in_googles_shape(server: Running) -> None:
    key = server.new_key("only-one", KeyLimits(allowed_models=("test-image",)))
    client = gemini(server, key)
    listed = list(client.models.list())
    assert [m.name for m in listed] == ["models/test-image"]
    assert listed[0].supported_actions == ["generateContent", "streamGenerateContent"]
    assert client.models.get(model="ti").name == "models/ti"  # an alias, as asked
    other = gemini(server, server.new_key())
    everyone = list(other.models.list(config={"page_size": 1}))
    assert {m.name for m in everyone} >= {"models/test-image", "models/test-failover"}
    # An OpenAI client on the same path still gets OpenAI's list.
    openai_list = httpx.get(f"{server.v1}/models", headers={"authorization": f"Bearer {key}"})
    assert openai_list.json()["object"] == "list"


# (body, params, status, google status, the field named)
BAD: list[tuple[Any, dict[str, str], int, str, str | None]] = [
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"imageConfig": {"aspectRatio": "7:3"}}}, {}, 400,
     "INVALID_ARGUMENT", "generationConfig.imageConfig.aspectRatio"),
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"imageConfig": {"imageSize": "1k"}}}, {}, 400,
     "INVALID_ARGUMENT", "generationConfig.imageConfig.imageSize"),
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"imageConfig": {"personGeneration": "ALLOW_ALL"}}}, {}, 400,
     "INVALID_ARGUMENT", "generationConfig.imageConfig.personGeneration"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 11}},
     {}, 400, "INVALID_ARGUMENT", "generationConfig.candidateCount"),
    # Digits int() refuses ("²": a 500 once) or takes though no client means them ("٣").
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": "²"}},
     {}, 400, "INVALID_ARGUMENT", "generationConfig.candidateCount"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"seed": "٣"}},
     {}, 400, "INVALID_ARGUMENT", "generationConfig.seed"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"seed": -1}}, {}, 400,
     "INVALID_ARGUMENT", "generationConfig.seed"),
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"responseModalities": ["TEXT"]}}, {}, 400, "INVALID_ARGUMENT",
     "generationConfig.responseModalities"),
    ({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]}, {}, 400,
     "INVALID_ARGUMENT", "tools"),
    ({"contents": [{"parts": [{"text": "x"}]}], "prompt": "x"}, {}, 400, "INVALID_ARGUMENT",
     "prompt"),
    ({"generationConfig": {}}, {}, 400, "INVALID_ARGUMENT", "contents"),
    ({"contents": [{"parts": [{"text": "x"}]}],  # was taken, and the image dropped
      "systemInstruction": {"parts": [{"fileData": {"fileUri": "https://example.com/a.png"}}]}},
     {}, 400, "INVALID_ARGUMENT", "systemInstruction.parts[0]"),
    ({"contents": [{"parts": [{"text": "  "}]}]}, {}, 400, "INVALID_ARGUMENT", "contents"),
    ({"contents": [{"role": "tool", "parts": [{"text": "x"}]}]}, {}, 400, "INVALID_ARGUMENT",
     "contents[0].role"),
    ({"contents": [{"role": {}, "parts": [{"text": "x"}]}]}, {}, 400, "INVALID_ARGUMENT",
     "contents[0].role"),  # was read as "user"
    ({"contents": [{"parts": [{"text": "x", "thought": "yes"}]}]}, {}, 400,
     "INVALID_ARGUMENT", "contents[0].parts[0].thought"),
    ({"contents": [{"parts": [{"functionCall": {"name": "f"}}]}]}, {}, 400,
     "INVALID_ARGUMENT", "contents[0].parts[0].functionCall"),
    ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png",
                                              "data": base64.b64encode(b"not an image").decode()}},
                              {"text": "x"}]}]}, {}, 400, "INVALID_ARGUMENT",
     "contents[0].parts[0].inlineData.data"),
    ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "@@@"}},
                              {"text": "x"}]}]}, {}, 400, "INVALID_ARGUMENT",
     "contents[0].parts[0].inlineData.data"),
    ({"contents": [{"parts": [{"fileData": {"fileUri": "http://example.com/a.png"}},
                              {"text": "x"}]}]}, {}, 400, "INVALID_ARGUMENT",
     "contents[0].parts[0].fileData.fileUri"),
    ({"contents": [{"parts": [{"text": "x"}]}],
      "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "SOMETIMES"}]},
     {}, 400, "INVALID_ARGUMENT", "safetySettings[0].threshold"),
    ({"contents": [{"parts": [{"text": "x"}]}],  # a 500 once (found by tests/test_fuzz_api.py)
      "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": {}}]},
     {}, 400, "INVALID_ARGUMENT", "safetySettings[0].threshold"),
    # Valid Gemini, but no route of test-image serves it: the field that rules it out.
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"imageConfig": {"aspectRatio": "4:5"}}}, {}, 400,
     "INVALID_ARGUMENT", "generationConfig.imageConfig.aspectRatio"),
    ({"contents": [{"parts": [{"text": "x"}]}],
      "generationConfig": {"imageConfig": {"imageSize": "4K"}}}, {}, 400,
     "INVALID_ARGUMENT", "generationConfig.imageConfig.imageSize"),
    ([{"contents": []}], {}, 400, "INVALID_ARGUMENT", None),
]


@pytest.mark.parametrize("count", ["2", 2.0])
def test_an_integer_may_be_quoted_or_integral(server: Running, api_key: str,
                                              count: str | float) -> None:
    """proto3 JSON quotes integers at will, and JSON Schema's integer includes 2.0."""
    answer = post(server, GENERATE, {"contents": [{"parts": [{"text": "x"}]}],
                                     "generationConfig": {"candidateCount": count}}, api_key)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["candidates"]) == 2


@pytest.mark.parametrize(("body", "params", "status", "google", "field"), BAD)
def test_bad_requests_are_googles_errors_naming_the_field_and_bill_nothing(
        server: Running, api_key: str, body: Any, params: dict[str, str], status: int,
        google: str, field: str | None) -> None:
    before = len(ledger(server))
    answer = post(server, GENERATE, body, api_key, **params)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["status"]) == (status, google)
    violations = [v["field"] for d in error["details"] if d["@type"].endswith("BadRequest")
                  for v in d["fieldViolations"]]
    assert violations == ([field] if field else [])
    if field:  # the message names it too (Google's unknown-field message: its last name)
        assert field.rsplit(".", 1)[-1] in error["message"]
    assert "x-request-id" in answer.headers
    assert len(ledger(server)) == before


def test_the_sdk_raises_googles_error_classes(server: Running, api_key: str) -> None:
    client = gemini(server, api_key)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            model="test-image", contents="x",
            config=types.GenerateContentConfig(image_config=types.ImageConfig(aspect_ratio="5:4")))
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="no-such-model", contents="x")
    assert (caught.value.code, caught.value.status) == (404, "NOT_FOUND")
    wrong = gemini(server, "sy-wrong")
    with pytest.raises(errors.ClientError) as caught:
        wrong.models.generate_content(model="test-image", contents="x")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    reasons = [d.get("reason") for d in caught.value.details["error"]["details"]]
    assert reasons == ["API_KEY_INVALID"]
    # Every route failed (the simulated host answers 429, 500 or 503 at random): the class
    # Google pairs with the status.
    with pytest.raises(errors.APIError) as failed:
        client.models.generate_content(model="test-down", contents="x")
    expected = {429: "RESOURCE_EXHAUSTED", 502: "INTERNAL", 503: "UNAVAILABLE"}
    assert failed.value.status == expected[failed.value.code]


@pytest.mark.parametrize(("path", "key", "params", "status", "google"), [
    (GENERATE, None, {}, 403, "PERMISSION_DENIED"),
    ("/v1beta/models/test-image:countTokens", "own", {}, 404, "NOT_FOUND"),
    ("/v1beta/models/test-image:streamGenerateContent", "own", {}, 400, "INVALID_ARGUMENT"),
    ("/v1/models/test-image:generateContent", None, {}, 403, "PERMISSION_DENIED"),
    ("/v1beta/nothing-here", "own", {}, 404, "NOT_FOUND"),
])
def test_every_v1beta_refusal_is_in_googles_shape(
        server: Running, api_key: str, path: str, key: str | None, params: dict[str, str],
        status: int, google: str) -> None:
    answer = post(server, path, {"contents": [{"parts": [{"text": "x"}]}]},
                  api_key if key else None, **params)
    assert answer.status_code == status
    assert answer.json()["error"]["status"] == google


def test_a_body_over_the_cap_is_googles_413(server: Running, api_key: str) -> None:
    big = base64.b64encode(b"\0" * (5 * 1024 * 1024)).decode()
    answer = post(server, GENERATE, {"contents": [{"parts": [
        {"inlineData": {"mimeType": "image/png", "data": big}}]}]}, api_key)
    assert answer.status_code == 413
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_a_key_over_its_rate_limit_is_resource_exhausted(server: Running) -> None:
    key = server.new_key("slow", KeyLimits(rpm=1))
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    assert post(server, GENERATE, body, key).status_code == 200
    answer = post(server, GENERATE, body, key)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert any(d["@type"].endswith("RetryInfo") for d in error["details"])


def test_hints_no_host_takes_are_named_not_dropped(server: Running, api_key: str) -> None:
    client = gemini(server, api_key)
    response = client.models.generate_content(
        model="test-image", contents="x", config=types.GenerateContentConfig(
            temperature=0.2, safety_settings=[types.SafetySetting(
                category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                threshold=types.HarmBlockThreshold.BLOCK_NONE)]))
    headers = response.sdk_http_response.headers if response.sdk_http_response else None
    assert headers is not None
    assert headers["x-switchyard-ignored"] == "generationConfig.temperature, safetySettings"


def test_the_strategy_header_and_suffix_route_it(server: Running, api_key: str) -> None:
    # Which host is fastest depends on what this module's server has seen: the strategy used
    # is what is checked.
    fast = gemini(server, api_key, headers={"x-switchyard-strategy": "fastest"})
    response = fast.models.generate_content(model="test-image", contents="x")
    assert response.sdk_http_response and response.sdk_http_response.headers
    assert response.sdk_http_response.headers["x-switchyard-strategy"] == "fastest"
    plain = gemini(server, api_key)
    suffixed = plain.models.generate_content(model="test-image:fastest", contents="x")
    assert suffixed.sdk_http_response and suffixed.sdk_http_response.headers
    assert suffixed.sdk_http_response.headers["x-switchyard-strategy"] == "fastest"
    unknown = gemini(server, api_key, headers={"x-switchyard-strategy": "quickest"})
    with pytest.raises(errors.ClientError) as caught:
        unknown.models.generate_content(model="test-image", contents="x")
    assert caught.value.code == 400 and "x-switchyard-strategy" in (caught.value.message or "")


def test_an_idempotent_retry_is_answered_once(server: Running, api_key: str) -> None:
    body = {"contents": [{"parts": [{"text": "once"}]}]}
    headers = {"x-goog-api-key": api_key, "idempotency-key": "gemini-once-1"}
    first = httpx.post(server.base_url + GENERATE, json=body, headers=headers, timeout=30)
    again = httpx.post(server.base_url + GENERATE, json=body, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json() == again.json()
    assert sum(r.request_id == first.json()["responseId"] for r in ledger(server)) == 1


@pytest.mark.parametrize(("method", "path", "content"), [
    ("POST", "/v1/images/generations", b"{nope"),
    ("POST", "/v1/images/edits", b"{nope"),
    ("GET", "/v1/batches?limit=abc", None),
    ("POST", "/v1/batches", b"[]"),
    ("GET", "/v1/files/file-none", None),
    ("GET", "/v1/usage?format=xml", None),
])
@pytest.mark.parametrize("style", ["header", "query"])
def test_openai_surfaces_answer_openai_errors_whatever_key_comes_along(
        server: Running, api_key: str, method: str, path: str, content: bytes | None,
        style: str) -> None:
    """A client that sends a Google-style key along to OpenAI's surfaces still gets OpenAI's
    error body, which its SDK reads (a Google-style key made them Google's once)."""
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    if style == "header":
        headers["x-goog-api-key"] = "x"
    else:
        path += ("&" if "?" in path else "?") + "key=x"
    answer = httpx.request(method, server.base_url + path, content=content, headers=headers)
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and "status" not in error, answer.text
    assert "type" in error and "code" in error, answer.text


def test_a_null_is_a_field_left_unset(server: Running, api_key: str) -> None:
    """proto3 JSON: a role or thought of null is no role or thought (was a 400 for thought)."""
    body = {"contents": [{"role": None, "parts": [{"text": "a lighthouse", "thought": None}]}]}
    answer = post(server, GENERATE, body, api_key)
    assert answer.status_code == 200, answer.text
