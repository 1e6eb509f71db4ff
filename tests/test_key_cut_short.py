"""A host that quotes Switchyard's provider key in an error text: the text is cut to 300
characters before the key is cut out, so a key that straddles the cut was left as a long
prefix (only a whole key was replaced), and relayed to the tenant in the error body."""
from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from proxy.failures import Failure, Kind
from tests import protocol_kit as kit
from tests.test_protocol_fal import MODEL_TOML, PROVIDERS_TOML

FAL_KEY = "a1b2c3d4-e5f6-4890-abcd-ef1234567890:0123456789abcdef0123456789abcdef"



def echoing_host(pad: int) -> httpx.MockTransport:
    """A 422 whose detail quotes the request's Authorization header after `pad` characters
    (e.g. the echoed prompt or input), as a misbehaving gateway might."""
    def handle(request: httpx.Request) -> httpx.Response:
        detail = "x" * pad + " rejected; headers were Authorization: " + \
            request.headers["authorization"]
        return httpx.Response(422, content=orjson.dumps({"detail": detail}),
                              headers={"content-type": "application/json"})
    return httpx.MockTransport(handle)


@pytest.mark.parametrize("into_key", [6, 20, 60])
def test_no_part_of_the_key_survives_a_cut(tmp_path: Path, into_key: int) -> None:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-2": MODEL_TOML}, {"FAL_KEY": FAL_KEY})
    prefix_len = len(" rejected; headers were Authorization: Key ")
    pad = 299 - prefix_len - into_key  # the cut falls this far into the key
    with contextlib.ExitStack() as stack:
        sdk = kit.sdk_on(stack, tmp_path / "data", catalog, {"fal": echoing_host(pad)})
        try:
            sdk.images.generate(model="nano-banana-2", prompt="a red fox")
        except openai.APIStatusError as exc:
            message = exc.response.json()["error"]["message"]
        else:
            raise AssertionError("expected an error")
    assert FAL_KEY[:5] not in message, message[-120:]
    assert "[key]" in message


@pytest.mark.parametrize("message,shown", [
    ("bad key sk-abcdef123456 (code 401)", "bad key [key] (code 401)"),  # whole
    ("bad key sk-abcdef12… (code 401)", "bad key [key]… (code 401)"),  # cut, a code after
    ("bad key sk-abcdef12…", "bad key [key]…"),
    ("bad key sk-ab…", "bad key [key]…"),  # four characters at a cut's end
    ("sk-abcdef1 and sk-abcdef123456", "[key] and [key]"),
    ("nothing of it: sk-ab", "nothing of it: sk-ab"),  # fewer than KEY_HEAD stay
    ("quoted as a form: sk-abcdef%3A123456", "quoted as a form: [key]"),  # URL-encoded
    ("cut past its colon: sk-abcdef:1234 (code 401)", "cut past its colon: [key] (code 401)"),
    ("cut past its colon: sk-abcdef:1234…", "cut past its colon: [key]…"),
])
def test_a_failure_keeps_no_run_of_the_keys_head(message: str, shown: str) -> None:
    secret = "sk-abcdef:123456" if "%3A" in message or "colon" in message else \
        "sk-abcdef123456"
    failure = Failure(Kind.AUTH, message).without(secret)
    assert failure.message == shown
