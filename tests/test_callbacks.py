"""Callbacks instead of polling: hosts get a per-job URL on Switchyard, a callback wakes the
waiting flow (which then fetches the result itself), signatures are checked where hosts sign,
and polling remains the fallback."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest

from proxy import catalog as catalog_module
from proxy.providers import ADAPTERS, webhooks
from proxy.providers.callbacks import FALLBACK_POLL_S, Callbacks
from tests.conftest import Running, make_config, serve
from tests.fakes.replicate import FakeReplicate

SECRET = "whsec_" + base64.b64encode(b"a signing secret of 32 bytes....").decode()
PROVIDERS = """
[replicate]
protocol = "replicate"
base_url = "https://api.replicate.com/v1"
key_env = "REPLICATE_API_TOKEN"
allowed_hosts = ["replicate.delivery"]
options_env = { webhook_secret = "REPLICATE_WEBHOOK_SECRET" }
"""
MODEL = """
name = "nano-banana-2"
[capabilities]
aspect_ratios = ["1:1"]
[[routes]]
provider = "replicate"
upstream_model = "google/nano-banana-2"
price.per_image = { "1K" = 0.067 }
"""


def test_tickets_wake_waiters_once_each() -> None:
    async def go() -> None:
        callbacks = Callbacks("https://sy.example/")
        token, url = callbacks.open("replicate")
        assert url == f"https://sy.example/callbacks/replicate/{token}" and len(token) >= 32
        assert callbacks.provider_of(token) == "replicate"
        waiter = asyncio.create_task(callbacks.wait(token, 5))
        await asyncio.sleep(0.01)
        assert callbacks.wake(token) and await waiter
        assert not await callbacks.wait(token, 0.01), "a second wait needs a second call"
        callbacks.close(token)
        assert not callbacks.wake(token) and callbacks.provider_of(token) is None
        assert not Callbacks(None).enabled

    asyncio.run(go())


def signed(body: bytes, when: float | None = None, webhook_id: str = "msg_1") -> dict[str, str]:
    stamp = int(time.time() if when is None else when)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(stamp),
            "webhook-signature": webhooks.sign(SECRET, webhook_id, stamp, body)}


@pytest.mark.parametrize(("change", "ok"), [
    (lambda h, b: (h, b), True),
    (lambda h, b: (h, b + b" "), False),  # tampered body
    (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), False),  # tampered id
    (lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), False),
    (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), False),
    (lambda h, b: ({**h, "webhook-signature": "v1,x " + h["webhook-signature"]}, b), True),
])
def test_standard_webhook_signatures(change: Any, ok: bool) -> None:
    body = b'{"id": "p1", "status": "succeeded"}'
    headers, sent = change(signed(body), body)
    assert webhooks.verify(headers, sent, SECRET, time.time()) is ok


def test_a_replayed_webhook_is_refused() -> None:
    body = b"{}"
    old = signed(body, when=time.time() - 3600)
    assert not webhooks.verify(old, body, SECRET, time.time())
    assert not webhooks.verify(signed(body), body, "", time.time())


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[tuple[Running, FakeReplicate]]:
    root = tmp_path / "routes"
    (root / "models").mkdir(parents=True)
    (root / "providers.toml").write_text(PROVIDERS)
    (root / "models" / "nano-banana-2.toml").write_text(MODEL)
    env = {"REPLICATE_API_TOKEN": "test-key", "REPLICATE_WEBHOOK_SECRET": SECRET}
    live = catalog_module.load(root, env, demo=False, protocols=ADAPTERS)
    # Prefer-wait off and a long poll interval: without the callback this takes 15 s or more.
    fake = FakeReplicate(states=("starting", "succeeded"))
    config = make_config(tmp_path / "data", public_base_url="https://switchyard.example")
    with serve(config, live, {"replicate": fake}) as running:
        yield running, fake


def in_background(running: Running) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def call() -> None:
        with openai.OpenAI(base_url=running.v1, api_key=running.new_key(),
                           max_retries=0) as sdk:
            started = time.monotonic()
            outcome["result"] = sdk.images.generate(model="nano-banana-2", prompt="a fox")
            outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def hook_path(fake: FakeReplicate) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + 5
    while not fake.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    create = fake.seen[0].json
    return urlsplit(create["webhook"]).path, create


def test_a_signed_callback_wakes_the_request(switchyard: tuple[Running, FakeReplicate]) -> None:
    running, fake = switchyard
    thread, outcome = in_background(running)
    path, create = hook_path(fake)
    assert create["webhook_events_filter"] == ["completed"]
    assert path.startswith("/callbacks/replicate/")
    body = orjson.dumps({"id": "ignored", "status": "succeeded", "output": "https://evil.test/x"})
    forged = httpx.post(running.base_url + path, content=body,
                        headers={**signed(body), "webhook-signature": "v1,Zm9yZ2Vk"})
    assert forged.status_code == 401
    time.sleep(0.2)
    answer = httpx.post(running.base_url + path, content=body, headers=signed(body))
    assert answer.status_code == 200 and answer.json()["waiting"] is True
    thread.join(10)
    assert outcome["result"].data[0].b64_json and outcome["seconds"] < FALLBACK_POLL_S / 2
    # The body was not trusted: the result came from polling Replicate, not from the body.
    assert not any(s.url.host == "evil.test" for s in fake.seen)
    gets = [s for s in fake.seen if s.method == "GET" and s.url.host == "api.replicate.com"]
    assert len(gets) == 1


def test_unknown_tokens_and_providers(switchyard: tuple[Running, FakeReplicate]) -> None:
    running, _ = switchyard
    body = b"{}"
    unknown = httpx.post(f"{running.base_url}/callbacks/replicate/nope", content=body,
                         headers=signed(body))
    assert unknown.status_code == 200 and unknown.json()["waiting"] is False
    assert httpx.post(f"{running.base_url}/callbacks/nobody/nope").status_code == 404


def test_polling_is_the_fallback_when_no_callback_comes() -> None:
    from dataclasses import replace

    from proxy.providers import flows, replicate
    from tests.test_protocol_replicate import make_request, make_route

    fake = FakeReplicate(states=("starting", "processing", "succeeded"))
    route = make_route()
    route = replace(route, options={**route.options, "prefer_wait_s": 0})

    async def go() -> float:
        callbacks = Callbacks("https://sy.example", fallback_poll_s=0.05)
        async with httpx.AsyncClient(transport=fake) as client:
            started = time.monotonic()
            result = await flows.generate(replicate.ADAPTER, route, make_request(), client,
                                          time.monotonic() + 10, callbacks=callbacks)
        assert result.images
        return time.monotonic() - started

    assert asyncio.run(go()) < 2
    assert fake.seen[0].json["webhook"].startswith("https://sy.example/callbacks/replicate/")


HOOK = "https://sy.example/callbacks/p/tok"


def test_fal_and_wavespeed_hand_over_the_callback_url() -> None:
    from urllib.parse import parse_qs

    from proxy.providers import fal, wavespeed
    from tests import test_protocol_fal as fal_tests
    from tests import test_protocol_wavespeed as ws_tests

    route = fal_tests.make_route({"callback_url": HOOK})
    call = fal.build(fal_tests.make_request(), route, "k", fal.Options.of(route))
    assert parse_qs(urlsplit(call.url).query) == {"fal_webhook": [HOOK]}
    route = ws_tests.make_route({"callback_url": HOOK})
    call = wavespeed.build(ws_tests.make_request(), route, "k", wavespeed.Options.of(route), [])
    assert parse_qs(urlsplit(call.url).query) == {"webhook": [HOOK]}
    plain = ws_tests.make_route()
    assert "?" not in wavespeed.build(ws_tests.make_request(), plain, "k",
                                      wavespeed.Options.of(plain), []).url


def test_task_routes_take_a_callback_only_if_their_body_has_one() -> None:
    from proxy.config import default_routes_dir
    from proxy.providers import task

    takes = task.ADAPTER.takes_callback
    assert takes is not None
    shipped = {r.provider.name: r for m in catalog_module.inventory(default_routes_dir(), {},
                                                                    ADAPTERS)
               for r in m.routes}
    assert takes(shipped["apipass"]) and not takes(shipped["toapis"])
