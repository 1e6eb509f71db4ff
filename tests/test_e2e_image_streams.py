"""`stream: true` on /v1/images/generations and /edits, through the official SDK: OpenAI's
events, each valid against its schema, one completed event per image and no invented partials;
keep-alive comments while a host is slow; a failure after the stream began as an error event
the SDK raises; a client that leaves cancels the run and pays nothing."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types import ImageEditCompletedEvent, ImageGenCompletedEvent

from tests.conftest import Running
from tests.surfaces import key_id, ledger, opened, picture

BODY = {"model": "test-image", "prompt": "a red fox", "stream": True}


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; comments are skipped."""
    found = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            fields = dict(line.split(": ", 1) for line in lines)
            found.append((fields["event"], orjson.loads(fields["data"])))
    return found


def test_sdk_generate_stream_gives_a_completed_event_per_image(
        client: openai.OpenAI, validate: Callable[[str, Any], None]) -> None:
    got = list(client.images.generate(model="test-image", prompt="a red fox", n=2,
                                      stream=True, partial_images=2))
    assert [type(event) for event in got] == [ImageGenCompletedEvent] * 2
    for event in got:
        assert opened(base64.b64decode(event.b64_json)).format == "PNG"
        assert event.output_format == "png" and event.created_at > 0
    assert got[-1].model_extra and got[-1].model_extra["switchyard"]["provider"]


def test_every_event_validates_against_openais_schema(
        server: Running, api_key: str, validate: Callable[[str, Any], None]) -> None:
    answer = httpx.post(f"{server.v1}/images/generations", json={**BODY, "n": 3},
                        headers={"authorization": f"Bearer {api_key}"}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-switchyard-provider"]  # done before the first keep-alive
    found = events(answer.text)
    assert [name for name, _ in found] == ["image_generation.completed"] * 3
    for name, data in found:
        assert data["type"] == name
        validate("ImageGenStreamEvent", data)
        validate("ImageGenCompletedEvent", data)


def test_sdk_edit_stream_multipart_and_json(
        server: Running, client: openai.OpenAI, api_key: str,
        validate: Callable[[str, Any], None]) -> None:
    got = list(client.images.edit(model="test-image", prompt="add a hat", stream=True,
                                  image=("in.png", picture(64, 64), "image/png")))
    assert [type(event) for event in got] == [ImageEditCompletedEvent]
    url = "data:image/png;base64," + base64.b64encode(picture(64, 64)).decode()
    answer = httpx.post(f"{server.v1}/images/edits", timeout=30,
                        json={**BODY, "images": [{"image_url": url}]},
                        headers={"authorization": f"Bearer {api_key}"})
    (name, data), = events(answer.text)
    assert name == "image_edit.completed"
    validate("ImageEditStreamEvent", data)
    validate("ImageEditCompletedEvent", data)


def test_a_slow_host_gets_keepalive_comments(slow: Running, keepalive: float,
                                             validate: Callable[[str, Any], None]) -> None:
    key = slow.new_key()
    with httpx.stream("POST", f"{slow.v1}/images/generations", json=BODY, timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        body = answer.read().decode()
    assert answer.status_code == 200 and "x-switchyard-provider" not in answer.headers
    assert body.startswith(": keep-alive\n\n") and body.count(": keep-alive") >= 10
    (name, data), = events(body)
    assert name == "image_generation.completed" and "partial" not in body
    validate("ImageGenCompletedEvent", data)
    assert data["switchyard"]["provider"] == "sim-cheap"
    with openai.OpenAI(base_url=slow.v1, api_key=key, max_retries=0) as sdk:
        got = list(sdk.images.generate(model="test-image", prompt="x", stream=True))
    assert [type(event) for event in got] == [ImageGenCompletedEvent]


def test_a_failure_after_the_stream_began_is_an_error_event(
        slow: Running, keepalive: float, validate: Callable[[str, Any], None]) -> None:
    key = slow.new_key()
    with httpx.stream("POST", f"{slow.v1}/images/generations", timeout=30,
                      json={**BODY, "model": "test-down"},
                      headers={"authorization": f"Bearer {key}"}) as answer:
        body = answer.read().decode()
    (name, data), = events(body)
    assert name == "error"
    validate("ErrorResponse", data)
    with openai.OpenAI(base_url=slow.v1, api_key=key, max_retries=0) as sdk, \
            pytest.raises(openai.APIError) as caught:
        list(sdk.images.generate(model="test-down", prompt="x", stream=True))
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "upstream_error"
    rows = [row for row in ledger(slow) if row.key_id == key_id(slow, key)]
    assert len(rows) == 2 and all(row.billed_micros == 0 for row in rows)


def test_a_failure_before_the_first_keepalive_is_a_plain_error(slow: Running) -> None:
    with openai.OpenAI(base_url=slow.v1, api_key=slow.new_key(), max_retries=0) as sdk, \
            pytest.raises(openai.APIStatusError) as caught:
        sdk.images.generate(model="test-down", prompt="x", stream=True)
    assert caught.value.status_code in (429, 502, 503)


def test_a_client_that_leaves_cancels_the_run_and_pays_nothing(slow: Running,
                                                               keepalive: float) -> None:
    key = slow.new_key()
    with httpx.stream("POST", f"{slow.v1}/images/generations", json=BODY, timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        next(answer.iter_bytes())  # the first keep-alive: the run is under way
    for _ in range(250):
        rows = [row for row in ledger(slow) if row.key_id == key_id(slow, key)]
        if rows:
            break
        time.sleep(0.02)
    assert [(row.outcome, row.billed_micros) for row in rows] == [("cancelled", 0)]


@pytest.mark.parametrize(("extra", "headers", "param"), [
    ({"partial_images": 4}, {}, "partial_images"),
    ({"response_format": "url"}, {}, "response_format"),
    ({}, {"idempotency-key": "k-stream"}, "idempotency-key"),
    ({}, {"prefer": "respond-async"}, "stream"),
])
def test_refusals_are_plain_400s(server: Running, api_key: str, extra: dict[str, Any],
                                 headers: dict[str, str], param: str) -> None:
    answer = httpx.post(f"{server.v1}/images/generations", json={**BODY, **extra}, timeout=30,
                        headers={"authorization": f"Bearer {api_key}", **headers})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].lower() == param
