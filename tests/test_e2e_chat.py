"""Chat completions with image output end to end: the official openai SDK's
client.chat.completions.create against a real Switchyard, in the shape OpenRouter set
(`modalities`, `image_config`, `message.images[]` data URLs), streamed and not; bodies checked
against OpenAI's schemas; bad input is OpenAI's error naming the chat field, billed nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy import geometry
from tests import protocol_kit as kit
from tests.conftest import Running
from tests.surfaces import HOSTS, hosted, key_id, ledger, opened, picture

Validate = Callable[[str, Any], None]
USER = [{"role": "user", "content": "a lighthouse at dawn"}]


def images_of(choice: Any) -> list[bytes]:
    """The decoded images of a choice's message (or a chunk's delta)."""
    message = getattr(choice, "message", None) or choice.delta
    decoded = []
    for item in message.model_extra["images"]:
        url = item["image_url"]["url"]
        header, _, data = url.partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64")
        decoded.append(base64.b64decode(data))
    return decoded


def test_create_answers_a_choice_per_image(client: openai.OpenAI, server: Running,
                                           api_key: str, validate: Validate) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="test-image", messages=USER, n=2, modalities=["image", "text"],
        extra_body={"image_config": {"aspect_ratio": "16:9", "image_size": "2K"}})
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == "test-image"
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.finish_reason == "stop" and choice.message.role == "assistant"
        (image,) = images_of(choice)
        assert opened(image).size == geometry.pixels("16:9", "2K")
    assert raw.headers["x-switchyard-provider"] == "sim-cheap"
    assert completion.model_extra and completion.model_extra["provider"] == "sim-cheap"
    assert completion.usage and completion.usage.model_extra
    billed = float(raw.headers["x-switchyard-billed-usd"])
    assert completion.usage.model_extra["cost"] == billed == 0.08
    row = next(r for r in ledger(server) if r.request_id == raw.headers["x-request-id"])
    assert (row.key_id, row.outcome, row.n_delivered, row.billed_micros) == \
        (key_id(server, api_key), "success", 2, 80_000)


def test_a_text_only_request_gets_the_image_models_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="ti", messages=USER)
    (choice,) = completion.choices
    assert opened(images_of(choice)[0]).size == geometry.pixels("1:1", "1K")
    assert choice.message.content is None  # the simulated host says nothing


def test_image_parts_make_it_an_edit(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="test-image", messages=USER)
    drawn = first.choices[0].message.model_extra["images"]
    history = [
        *USER, {"role": "assistant", "content": None, "images": drawn},
        {"role": "user", "content": [
            {"type": "text", "text": "now at night, with this moon"},
            {"type": "image_url", "image_url": {"url": kit.data_uri(picture(16, 16))}}]}]
    raw = client.chat.completions.with_raw_response.create(model="test-image",
                                                           messages=history)
    assert raw.headers["x-switchyard-provider"] == "sim-cheap"
    assert images_of(raw.parse().choices[0])


def test_stream_sends_chunks_then_usage_then_done(client: openai.OpenAI,
                                                  validate: Validate) -> None:
    stream = client.chat.completions.create(model="test-image", messages=USER, stream=True,
                                            n=2, stream_options={"include_usage": True})
    chunks = list(stream)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    *deltas, last = chunks
    assert [c.choices[0].index for c in deltas] == [0, 1]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(len(images_of(c.choices[0])) == 1 for c in deltas)
    assert [c.finish_reason for c in last.choices] == ["stop", "stop"]
    assert last.usage and last.usage.model_extra and last.usage.model_extra["cost"] == 0.04
    extra = last.model_extra or {}
    assert extra["switchyard"]["provider"] == extra["provider"] == "sim-cheap"
    assert extra["switchyard"]["billed_usd"] == "0.040000"


def test_the_raw_stream_is_server_sent_events(server: Running, api_key: str) -> None:
    answer = httpx.post(f"{server.v1}/chat/completions", timeout=30,
                        headers={"authorization": f"Bearer {api_key}"},
                        json={"model": "test-image", "messages": USER, "stream": True})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-switchyard-provider"] == "sim-cheap"
    events = [e for e in answer.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and len(events) == 3
    assert orjson.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["images"]


# (request fields, status, error code, param)
BAD: list[tuple[dict[str, Any], int, str, str | None]] = [
    ({"model": "gpt-4o"}, 404, "model_not_found", "model"),
    ({"model": None}, 400, "missing_required_parameter", "model"),
    ({"messages": []}, 400, "missing_required_parameter", "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "missing_required_parameter",
     "messages"),
    ({"messages": [{"role": "user", "content": "x" * 32_001}]}, 400,
     "string_above_max_length", "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_value",
     "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                  "input_audio": {"data": "", "format": "wav"}}]}]},
     400, "unsupported_value", "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]},
     400, "invalid_value", "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
        {"type": "text", "text": "x"}]}]},
     400, "invalid_image_format", "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "1"}]}]}, 400,
     "unsupported_parameter", "messages[0].tool_calls"),
    ({"modalities": ["text"]}, 400, "unsupported_value", "modalities"),
    ({"modalities": ["image", "audio"]}, 400, "unsupported_value", "modalities"),
    ({"image_config": {"aspect_ratio": "7:3"}}, 400, "invalid_value",
     "image_config.aspect_ratio"),
    ({"image_config": {"image_size": "3K"}}, 400, "invalid_value", "image_config.image_size"),
    ({"image_config": {"style": "vivid"}}, 400, "unknown_parameter", "image_config.style"),
    ({"image_config": "16:9"}, 400, "invalid_value", "image_config"),
    ({"n": 0}, 400, "invalid_value", "n"),
    ({"n": 11}, 400, "invalid_value", "n"),
    ({"seed": -1}, 400, "invalid_value", "seed"),
    ({"stream": "yes"}, 400, "invalid_value", "stream"),
    ({"stream_options": {"include_usage": True}}, 400, "invalid_value", "stream_options"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
     "unsupported_parameter", "tools"),
    ({"response_format": {"type": "json_object"}}, 400, "unsupported_parameter",
     "response_format"),
    ({"prompt": "x"}, 400, "unknown_parameter", "prompt"),
    ({"route": {"strategy": "quickest"}}, 400, "invalid_value", "route.strategy"),
    # Valid, but no route of test-image serves it: the chat field that rules it out.
    ({"image_config": {"aspect_ratio": "4:5"}}, 400, "unsupported_value",
     "image_config.aspect_ratio"),
    ({"image_config": {"image_size": "4K"}}, 400, "unsupported_value",
     "image_config.image_size"),
    # Sampling hints are ignored, but typed as OpenAI's spec types them (were taken whole).
    ({"temperature": "hot"}, 400, "invalid_value", "temperature"),
    ({"max_tokens": 1.5}, 400, "invalid_value", "max_tokens"),
    ({"stop": [1]}, 400, "invalid_value", "stop"),
    ({"store": "yes"}, 400, "invalid_value", "store"),
    ({"messages": [{"role": "user", "content": "x", "name": 5}]}, 400, "invalid_value",
     "messages[0].name"),
]


@pytest.mark.parametrize(("fields", "status", "code", "param"), BAD)
def test_bad_requests_name_the_chat_field_and_bill_nothing(
        server: Running, api_key: str, validate: Validate, fields: dict[str, Any],
        status: int, code: str, param: str | None) -> None:
    before = len(ledger(server))
    body = {"model": "test-image", "messages": USER, **fields}
    answer = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=30,
                        headers={"authorization": f"Bearer {api_key}"})
    assert answer.status_code == status, answer.text
    validate("ErrorResponse", answer.json())
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    if param:
        assert param.split("[")[0] in error["message"] or error["param"] == "model"
    assert len(ledger(server)) == before


def test_the_sdk_raises_its_error_classes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="test-image", messages=USER,
                                       extra_body={"image_config": {"aspect_ratio": "7:3"}})
    assert caught.value.param == "image_config.aspect_ratio"
    with pytest.raises(openai.APIStatusError) as failed:  # every route failed
        client.chat.completions.create(model="test-down", messages=USER)
    assert failed.value.status_code in (429, 502, 503)
    assert failed.value.response.json()["error"]["type"] == "upstream_error"


def test_invalid_json_and_a_missing_key_are_openai_errors(server: Running) -> None:
    answer = httpx.post(f"{server.v1}/chat/completions", content=b"{nope",
                        headers={"authorization": "Bearer sy-wrong"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    answer = httpx.post(f"{server.v1}/chat/completions", content=b"{nope",
                        headers={"authorization": f"Bearer {server.new_key()}"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(("extra", "params"), [({"x-goog-api-key": "x"}, {}),
                                               ({}, {"key": "x"})])
def test_a_google_style_key_along_does_not_make_errors_googles(
        server: Running, extra: dict[str, str], params: dict[str, str]) -> None:
    """Chat is OpenAI's surface: its errors stay OpenAI's whatever else the client sends (a
    Google-style key made them Google's once, as it does on GET /v1/models)."""
    headers = {"authorization": f"Bearer {server.new_key()}", **extra}
    answer = httpx.post(f"{server.v1}/chat/completions", content=b"{nope", headers=headers,
                        params=params)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_json", answer.text
    too_big = httpx.post(f"{server.v1}/chat/completions", content=b"x" * (5 * 1024 * 1024),
                         headers=headers, params=params)
    assert too_big.status_code == 413 and isinstance(too_big.json()["error"]["type"], str)


def test_hints_no_host_takes_are_named_not_dropped(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="test-image", messages=USER, temperature=0.2, max_tokens=100)
    assert raw.headers["x-switchyard-ignored"] == "temperature, max_tokens"


def test_idempotency_applies_to_plain_answers_only(client: openai.OpenAI,
                                                   server: Running) -> None:
    headers = {"Idempotency-Key": "chat-once-1"}
    first = client.chat.completions.with_raw_response.create(
        model="test-image", messages=USER, extra_headers=headers)
    again = client.chat.completions.with_raw_response.create(
        model="test-image", messages=USER, extra_headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert first.parse().id == again.parse().id
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="test-image", messages=USER,
                                       stream=True, extra_headers={"Idempotency-Key": "s-1"})
    assert caught.value.param == "idempotency-key"


def test_a_chat_request_is_served_by_a_real_protocol_host(tmp_path: Path) -> None:
    """fal serves it: the reference image reaches fal's edit endpoint as the data URL sent."""
    upload = kit.data_uri(picture(24, 24))
    with hosted(tmp_path, HOSTS["fal"]) as (running, fake), kit.client(running) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="gemini-3.1-flash-image", modalities=["image"],
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "make it blue"},
                {"type": "image_url", "image_url": {"url": upload}}]}])
        assert raw.headers["x-switchyard-provider"] == "fal"
        (submit,) = fake.submits()
        assert submit.json["image_urls"] == [upload]
        assert images_of(raw.parse().choices[0])


def test_a_null_hint_or_name_is_none_given(server: Running, api_key: str) -> None:
    body = {"model": "test-image", "temperature": None,
            "messages": [{"role": "user", "content": "a lighthouse", "name": None}]}
    answer = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=30,
                        headers={"authorization": f"Bearer {api_key}"})
    assert answer.status_code == 200, answer.text
