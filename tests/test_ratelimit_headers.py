"""A limited key's x-ratelimit-* headers are on every response of it (README, "Keys, budgets
and billing"): also on a stream that began before its run ended (its figures are known at
admission, before the first byte) and on an error after the request was admitted and counted,
on every surface. Before (helper-49), both went without them."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from proxy.billing.keys import KeyLimits
from tests.conftest import Running

STREAMS = {
    "images": ("/v1/images/generations", {"model": "test-image", "prompt": "p", "stream": True,
                                          "route": {"only": ["sim-cheap"]}}),
    "chat": ("/v1/chat/completions", {"model": "test-image", "stream": True,
                                      "messages": [{"role": "user", "content": "p"}],
                                      "route": {"only": ["sim-cheap"]}}),
    "gemini": ("/v1beta/models/test-image:streamGenerateContent?alt=sse",
               {"contents": [{"parts": [{"text": "p"}]}]}),
}
FAILING = {
    "images": ("/v1/images/generations", {"model": "test-down", "prompt": "p"}),
    "chat": ("/v1/chat/completions", {"model": "test-down",
                                      "messages": [{"role": "user", "content": "p"}]}),
    "gemini": ("/v1beta/models/test-down:generateContent",
               {"contents": [{"parts": [{"text": "p"}]}]}),
}


def _auth(path: str, key: str) -> dict[str, str]:
    return {"x-goog-api-key": key} if "/v1beta/" in path else {"authorization": f"Bearer {key}"}


def _figures(headers: httpx.Headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.startswith("x-ratelimit-")}


@pytest.mark.parametrize("surface", list(STREAMS))
def test_a_stream_that_began_before_its_run_ended_says_the_key_s_figures(
        slow: Running, keepalive: float, surface: str) -> None:
    path, body = STREAMS[surface]
    key = slow.new_key(surface, KeyLimits(rpm=10, ipm=20))
    with httpx.stream("POST", slow.base_url + path, json=body, timeout=30,
                      headers=_auth(path, key)) as answer:
        answer.read()
    assert answer.status_code == 200
    assert "x-switchyard-provider" not in answer.headers  # it began before the run ended
    assert _figures(answer.headers)["x-ratelimit-remaining-requests"] == "9"


@pytest.mark.parametrize("surface", list(FAILING))
def test_an_error_after_the_admission_says_the_key_s_figures(slow: Running,
                                                             surface: str) -> None:
    path, body = FAILING[surface]
    key = slow.new_key(surface + "-down", KeyLimits(rpm=10, ipm=20))
    answer = httpx.post(slow.base_url + path, json=body, timeout=30,
                        headers=_auth(path, key))
    assert answer.status_code not in (200, 500), answer.text  # the host failed it
    assert _figures(answer.headers)["x-ratelimit-remaining-requests"] == "9"


def test_a_budget_refusal_after_the_admission_says_the_key_s_figures(slow: Running) -> None:
    """The key was admitted and counted, then its budget could not cover the request
    (helper-50: the 429 insufficient_quota went without them)."""
    key = slow.new_key("poor", KeyLimits(rpm=10, budget_usd=Decimal("0.001")))
    answer = httpx.post(slow.v1 + "/images/generations", timeout=30,
                        json={"model": "test-image", "prompt": "p"},
                        headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "insufficient_quota"
    assert _figures(answer.headers)["x-ratelimit-remaining-requests"] == "9"
