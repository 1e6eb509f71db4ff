"""Every error class through the official SDK: right status, right exception, OpenAI's shape."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from proxy.billing.store import Store
from tests.conftest import Running


def expect(exc_type: type[openai.APIStatusError], call: Callable[[], Any],
           validate: Callable[[str, Any], None]) -> dict[str, Any]:
    with pytest.raises(exc_type) as caught:
        call()
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    error: dict[str, Any] = body["error"]
    return error


def test_missing_key_is_401(server: Running, validate: Callable[[str, Any], None]) -> None:
    response = httpx.post(f"{server.v1}/images/generations",
                          json={"model": "test-image", "prompt": "x"})
    assert response.status_code == 401
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "missing_api_key"


def test_wrong_key_is_401_and_never_echoed(server: Running, validate: Callable[[str, Any], None],
                                           caplog: pytest.LogCaptureFixture) -> None:
    secret = "sy-this-is-not-a-real-key-0123456789"
    caplog.set_level(logging.DEBUG)
    with openai.OpenAI(base_url=server.v1, api_key=secret, max_retries=0) as sdk:
        error = expect(openai.AuthenticationError,
                       lambda: sdk.images.generate(model="test-image", prompt="x"), validate)
    assert error["code"] == "invalid_api_key"
    assert secret not in str(error) and secret not in caplog.text


def test_revoked_key_is_refused(server: Running, validate: Callable[[str, Any], None]) -> None:
    store = Store(server.config.database_path)
    record, key = store.create_key("short-lived")
    with openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0) as sdk:
        assert sdk.models.list().data
        assert store.revoke_key(record.id)
        store.close()
        # Revocation from another process reaches the server's one-second key cache.
        time.sleep(1.1)
        expect(openai.AuthenticationError, lambda: sdk.models.list(), validate)


def test_unknown_model_is_404(client: openai.OpenAI, validate: Callable[[str, Any], None]) -> None:
    error = expect(openai.NotFoundError,
                   lambda: client.images.generate(model="no-such-model", prompt="x"), validate)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize(("kwargs", "param", "code"), [
    ({"prompt": ""}, "prompt", "empty_prompt"),
    ({"prompt": "   "}, "prompt", "empty_prompt"),
    ({"prompt": "x" * 32_001}, "prompt", "string_above_max_length"),
    ({"prompt": "x", "n": 0}, "n", "invalid_value"),
    ({"prompt": "x", "n": 11}, "n", "invalid_value"),
    ({"prompt": "x", "size": "huge"}, "size", "invalid_value"),
    ({"prompt": "x", "size": "0x100"}, "size", "invalid_value"),
    ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_value"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "invalid_value"),
    ({"prompt": "x", "response_format": "binary"}, "response_format", "invalid_value"),
    ({"prompt": "x", "background": "green"}, "background", "invalid_value"),
    ({"prompt": "x", "output_compression": 101}, "output_compression", "invalid_value"),
    ({"prompt": "x", "moderation": "off"}, "moderation", "invalid_value"),
    ({"prompt": "x", "style": "gothic"}, "style", "invalid_value"),
    ({"prompt": "x", "stream": True, "response_format": "url"}, "response_format",
     "unsupported_value"),
    ({"prompt": "x", "extra_body": {"resolution": "8K"}}, "resolution", "invalid_value"),
    ({"prompt": "x", "extra_body": {"aspect_ratio": "7:3"}}, "aspect_ratio", "invalid_value"),
    ({"prompt": "x", "extra_body": {"image_urls": ["ftp://x/y.png"]}}, "image_urls[0]",
     "invalid_value"),
    ({"prompt": "x", "extra_body": {"colour": "red"}}, "colour", "unknown_parameter"),
    ({"prompt": "x", "size": "1024x1024", "extra_body": {"resolution": "1K"}}, "size",
     "invalid_value"),
])
def test_bad_parameters_are_400_naming_the_param(
        client: openai.OpenAI, validate: Callable[[str, Any], None], kwargs: dict[str, Any],
        param: str, code: str) -> None:
    error = expect(openai.BadRequestError,
                   lambda: client.images.generate(model="test-image", **kwargs), validate)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"extra_body": {"resolution": "4K"}}, "resolution"),
    ({"background": "transparent"}, "background"),
    ({"extra_body": {"aspect_ratio": "21:9"}}, "aspect_ratio"),
    ({"n": 6, "model": "test-failover"}, "n"),
])
def test_requests_no_route_can_serve_are_400(
        client: openai.OpenAI, validate: Callable[[str, Any], None], kwargs: dict[str, Any],
        param: str) -> None:
    kwargs = {"model": "test-image", **kwargs}
    error = expect(openai.BadRequestError,
                   lambda: client.images.generate(prompt="x", **kwargs), validate)
    assert error["param"] == param


def test_missing_prompt_and_model(server: Running, api_key: str,
                                  validate: Callable[[str, Any], None]) -> None:
    auth = {"authorization": f"Bearer {api_key}"}
    for body, param in (({"model": "test-image"}, "prompt"), ({"prompt": "x"}, "model")):
        response = httpx.post(f"{server.v1}/images/generations", headers=auth, json=body)
        assert response.status_code == 400
        validate("ErrorResponse", response.json())
        assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\"text\""])
def test_malformed_json_is_400(server: Running, api_key: str, raw: bytes,
                               validate: Callable[[str, Any], None]) -> None:
    response = httpx.post(f"{server.v1}/images/generations", content=raw, headers={
        "authorization": f"Bearer {api_key}", "content-type": "application/json"})
    assert response.status_code == 400
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "invalid_json"


def test_body_over_the_limit_is_413(server: Running, api_key: str,
                                    validate: Callable[[str, Any], None]) -> None:
    auth = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    big = b'{"model": "test-image", "prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = httpx.post(f"{server.v1}/images/generations", content=big, headers=auth)
    assert response.status_code == 413
    validate("ErrorResponse", response.json())

    def chunks() -> Any:  # no Content-Length: the limit holds while the body streams in
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    response = httpx.post(f"{server.v1}/images/generations", content=chunks(), headers=auth)
    assert response.status_code == 413


def test_non_image_upload_is_400(client: openai.OpenAI,
                                 validate: Callable[[str, Any], None]) -> None:
    error = expect(openai.BadRequestError, lambda: client.images.edit(
        model="test-image", prompt="x", image=("notes.png", b"just some text", "image/png")),
        validate)
    assert (error["param"], error["code"]) == ("image", "invalid_image_format")


@pytest.mark.parametrize(("body", "param", "code"), [
    # Multipart with the fields alone (httpx sends (None, value) as a plain form field).
    pytest.param({"files": {"model": (None, b"test-image"), "prompt": (None, b"x")}}, "image",
                 "missing_required_parameter", id="multipart"),
    pytest.param({"json": {"model": "test-image", "prompt": "x"}}, "image",
                 "missing_required_parameter", id="json"),
    # A file under another name is neither taken for the image nor ignored: it is named.
    pytest.param({"data": {"model": "test-image", "prompt": "x"},
                  "files": {"unrelated": ("a.txt", b"hello", "text/plain")}}, "unrelated",
                 "invalid_value", id="stray-file"),
])
def test_edit_without_image_is_400(server: Running, api_key: str, body: dict[str, Any],
                                   param: str, code: str,
                                   validate: Callable[[str, Any], None]) -> None:
    response = httpx.post(f"{server.v1}/images/edits", headers={
        "authorization": f"Bearer {api_key}"}, **body)
    assert response.status_code == 400
    validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param,
                                                              code)
    assert f"'{param}'" in error["message"]


def test_edit_json_file_id_is_400(server: Running, api_key: str) -> None:
    response = httpx.post(f"{server.v1}/images/edits", headers={
        "authorization": f"Bearer {api_key}"}, json={
        "model": "test-image", "prompt": "x", "images": [{"file_id": "file-abc"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "images[0].file_id"


def test_unknown_path_and_method_are_openai_shaped(server: Running, api_key: str,
                                                   validate: Callable[[str, Any], None]) -> None:
    auth = {"authorization": f"Bearer {api_key}"}
    response = httpx.get(f"{server.v1}/images/variations", headers=auth)
    assert response.status_code == 404
    validate("ErrorResponse", response.json())
    response = httpx.get(f"{server.v1}/images/generations", headers=auth)
    assert response.status_code == 405
    validate("ErrorResponse", response.json())
