"""The per-request JSON log line: who, what, how it ended, what it cost; never a secret, and
the prompt only when the operator asks for it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.billing.keys import KeyLimits
from tests.conftest import make_config, serve

PROMPT = "a very private prompt about a lighthouse"


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "switchyard.requests"]


@pytest.mark.parametrize("log_prompts", [False, True])
def test_one_line_per_request(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                              log_prompts: bool) -> None:
    caplog.set_level(logging.INFO, logger="switchyard.requests")
    with serve(make_config(tmp_path, log_prompts=log_prompts)) as running:
        key = running.new_key("logged", KeyLimits(rpm=2))
        with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
            sdk.images.generate(model="test-image", prompt=PROMPT, n=2)
            with pytest.raises(openai.APIStatusError):
                sdk.images.generate(model="test-down", prompt=PROMPT)
            with pytest.raises(openai.RateLimitError):
                sdk.images.generate(model="test-image", prompt=PROMPT)
    served, failed, limited = lines(caplog)
    assert served["outcome"] == "success" and served["provider"] == "sim-cheap"
    assert (served["n"], served["billed_usd"], served["attempts"]) == (2, "0.04", 1)
    assert served["request_id"].startswith("req_") and served["key_id"].startswith("key_")
    assert failed["outcome"] != "success" and failed["billed_usd"] is None
    assert limited["outcome"] == "rate_limited_key"
    text = caplog.text
    assert key not in text
    assert (PROMPT in text) is log_prompts
