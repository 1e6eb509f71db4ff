"""An unexpected exception inside Switchyard is a clean OpenAI-shaped 500: no traceback, no
exception text (it may hold secrets) in the body or the log."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy import app as app_module
from proxy.providers import ADAPTERS
from tests.conftest import make_config, serve

SECRET = "sk-upstream-secret-never-shown"


def explode(*args: Any) -> Any:
    raise RuntimeError(f"adapter bug holding {SECRET}")


def test_unexpected_exception_is_a_clean_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture,
                                             validate: Callable[[str, Any], None]) -> None:
    broken = dataclasses.replace(ADAPTERS["simulated"], flow=explode)
    monkeypatch.setattr(app_module, "ADAPTERS", {**ADAPTERS, "simulated": broken})
    caplog.set_level(logging.DEBUG)
    with serve(make_config(tmp_path)) as running:
        key = running.new_key()
        with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk, \
                pytest.raises(openai.InternalServerError) as caught:
            sdk.images.generate(model="test-image", prompt="x")
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "internal_error"
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert SECRET not in caught.value.response.text
    assert "RuntimeError" in caplog.text  # the operator learns what broke…
    assert SECRET not in caplog.text and "Traceback" not in caplog.text  # …but not its values
