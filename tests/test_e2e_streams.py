"""Streams on both surfaces while the host is slow: keep-alives each parser reads as nothing,
then the images; a failure after the stream began as the surface's error event; a client
that leaves cancels the run and is billed nothing. A run that ends before the first keep-alive
is answered plainly (see test_e2e_chat and test_e2e_gemini)."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest
from google.genai import errors

from tests.conftest import Running
from tests.surfaces import Row, gemini, key_id, ledger, opened

PROMPT = {"contents": [{"parts": [{"text": "a slow red fox"}]}]}
CHAT = {"model": "test-image", "messages": [{"role": "user", "content": "a slow red fox"}],
        "stream": True}


def test_gemini_stream_keeps_alive_with_blank_lines(slow: Running, keepalive: float) -> None:
    key = slow.new_key()
    with httpx.stream("POST", f"{slow.base_url}/v1beta/models/test-image:"
                      "streamGenerateContent?alt=sse", json=PROMPT, timeout=30,
                      headers={"x-goog-api-key": key}) as answer:
        body = answer.read().decode()
    assert answer.status_code == 200
    assert "x-switchyard-provider" not in answer.headers  # they left before the run ended
    blank, _, rest = body.partition("data: ")
    assert blank and set(blank) == {"\r", "\n"} and len(blank) >= 10  # ~50 keep-alives
    event = orjson.loads(rest.strip())
    assert event["switchyard"]["provider"] == "sim-cheap"
    assert event["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
    # google-genai reads a blank line as nothing (it would fail on an SSE comment).
    client = gemini(slow, key)
    (chunk,) = list(client.models.generate_content_stream(model="test-image",
                                                          contents="a slow red fox"))
    assert chunk.candidates and chunk.candidates[0].content
    part = (chunk.candidates[0].content.parts or [])[0]
    assert part.inline_data and opened(part.inline_data.data or b"").format == "PNG"


def test_chat_stream_keeps_alive_with_comments(slow: Running, keepalive: float) -> None:
    key = slow.new_key()
    with httpx.stream("POST", f"{slow.v1}/chat/completions", json=CHAT, timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        body = answer.read().decode()
    assert body.startswith(": keep-alive\n\n") and body.endswith("data: [DONE]\n\n")
    with openai.OpenAI(base_url=slow.v1, api_key=key, max_retries=0) as sdk:
        chunks = list(sdk.chat.completions.create(model="test-image", stream=True,
                                                  messages=CHAT["messages"]))
    assert chunks[0].choices[0].delta.model_extra
    assert chunks[0].choices[0].delta.model_extra["images"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_failure_after_the_stream_began_is_an_error_event(slow: Running,
                                                            keepalive: float) -> None:
    key = slow.new_key()
    client = gemini(slow, key)
    with pytest.raises(errors.APIError) as google:
        list(client.models.generate_content_stream(model="test-down", contents="x"))
    assert google.value.code in (429, 500, 502, 503) and google.value.status
    with openai.OpenAI(base_url=slow.v1, api_key=key, max_retries=0) as sdk, \
            pytest.raises(openai.APIError) as chat:
        list(sdk.chat.completions.create(model="test-down", stream=True,
                                         messages=CHAT["messages"]))
    assert isinstance(chat.value.body, dict) and chat.value.body["type"] == "upstream_error"
    rows = [row for row in ledger(slow) if row.key_id == key_id(slow, key)]
    assert len(rows) == 2 and all(row.outcome != "success" for row in rows)
    assert all(row.billed_micros == 0 for row in rows)


def test_a_failure_before_the_first_keepalive_is_a_plain_error(slow: Running) -> None:
    # The default keep-alive (seconds) is far off when sim-broken fails after 0.1 s.
    with openai.OpenAI(base_url=slow.v1, api_key=slow.new_key(), max_retries=0) as sdk, \
            pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="test-down", stream=True,
                                    messages=CHAT["messages"])
    assert caught.value.status_code in (429, 502, 503)
    assert caught.value.response.headers["x-switchyard-attempts"] == "1"


@pytest.mark.parametrize("surface", ["chat", "gemini"])
def test_a_client_that_leaves_cancels_the_run_and_pays_nothing(
        slow: Running, keepalive: float, surface: str) -> None:
    key = slow.new_key()
    if surface == "chat":
        url, body = f"{slow.v1}/chat/completions", CHAT
        headers = {"authorization": f"Bearer {key}"}
    else:
        url = f"{slow.base_url}/v1beta/models/test-image:streamGenerateContent?alt=sse"
        body, headers = PROMPT, {"x-goog-api-key": key}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as answer:
        next(answer.iter_bytes())  # the first keep-alive: the run is under way
        request_id = answer.headers["x-request-id"]
    assert _row(slow, request_id).outcome == "cancelled"
    assert _row(slow, request_id).billed_micros == 0


def _row(running: Running, request_id: str, within_s: float = 5.0) -> Row:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = [row for row in ledger(running) if row.request_id == request_id]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no ledger row for {request_id}")


def test_streams_take_no_idempotency_key(slow: Running) -> None:
    answer = httpx.post(f"{slow.base_url}/v1beta/models/test-image:streamGenerateContent",
                        params={"alt": "sse"}, json=PROMPT, timeout=30,
                        headers={"x-goog-api-key": slow.new_key(), "idempotency-key": "k1"})
    assert answer.status_code == 400
    assert answer.json()["error"]["details"][-1]["fieldViolations"][0]["field"] == \
        "idempotency-key"

