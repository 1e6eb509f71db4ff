"""A host that delivers fewer images than asked (0 < delivered < n), on every way a request
comes in: synchronous, an async job, a batch item and a stream. The client gets exactly the
delivered images, is billed for those alone, and the ledger row says n asked and n delivered.

sim-cheap ($0.02 an image at 1K, the cheapest route of test-image) is wrapped here to hand on
at most two of the images it makes: asked for 3, it delivers 2, billed $0.04."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImageGenCompletedEvent

from proxy.billing.keys import KeyLimits
from proxy.billing.rows import Entry
from tests.conftest import Running, make_config, serve
from tests.fakes.sim_wrap import Wrapped, wrapped
from tests.test_batches import finished, jsonl, lines_of
from tests.test_jobs import submit, wait_for

ASKED, DELIVERED = 3, 2
BILLED_MICROS = DELIVERED * 20_000


@pytest.fixture
def short(tmp_path: Path) -> Iterator[tuple[Running, Wrapped]]:
    config = make_config(tmp_path / "data")
    hosts = wrapped(config, ("sim-cheap",), keep=DELIVERED)
    with serve(config, transports=hosts) as running:
        yield running, hosts["sim-cheap"]


def entry(running: Running, request_id: str) -> Entry:
    with running.store() as store:
        found = store.money.entry(request_id)
    assert found is not None, f"no ledger row for {request_id}"
    return found


def assert_billed_as_delivered(row: Entry) -> None:
    assert (row.outcome, row.provider) == ("success", "sim-cheap")
    assert (row.n_asked, row.n_delivered) == (ASKED, DELIVERED)
    assert row.billed_micros == BILLED_MICROS and row.upstream_micros == BILLED_MICROS


def assert_images(data: list[dict[str, Any]]) -> None:
    assert len(data) == DELIVERED
    for item in data:
        assert base64.b64decode(item["b64_json"]).startswith(b"\x89PNG")


def test_sync_request_gets_and_pays_for_what_was_delivered(
        short: tuple[Running, Wrapped], validate: Callable[[str, Any], None]) -> None:
    running, host = short
    with openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="test-image", prompt="three foxes",
                                                    n=ASKED)
    body = raw.http_response.json()
    validate("ImagesResponse", body)
    assert_images(body["data"])
    assert raw.headers["x-switchyard-billed-usd"] == "0.040000"
    assert raw.headers["x-switchyard-cost-usd"] == "0.040000"
    assert host.asked == [ASKED], "the host was asked for n and came back short: no retry"
    assert_billed_as_delivered(entry(running, raw.headers["x-request-id"]))


def test_url_answers_link_exactly_the_delivered_images(short: tuple[Running, Wrapped]) -> None:
    running, _ = short
    with openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="test-image", prompt="three owls",
                                                    n=ASKED, response_format="url")
    links = [item["url"] for item in raw.http_response.json()["data"]]
    assert len(links) == DELIVERED
    assert all(httpx.get(link).content.startswith(b"\x89PNG") for link in links)
    assert_billed_as_delivered(entry(running, raw.headers["x-request-id"]))


def test_async_job_gets_and_pays_for_what_was_delivered(
        short: tuple[Running, Wrapped], validate: Callable[[str, Any], None]) -> None:
    running, _ = short
    key = running.new_key()
    accepted = submit(running, key, n=ASKED, prompt="three hares")
    assert accepted.status_code == 202
    done = wait_for(running, key, accepted.json()["id"])
    assert done["status"] == "succeeded"
    validate("ImagesResponse", done["result"])
    assert_images(done["result"]["data"])
    assert_billed_as_delivered(entry(running, done["id"]))


def test_batch_item_gets_and_pays_for_what_was_delivered(
        short: tuple[Running, Wrapped], validate: Callable[[str, Any], None]) -> None:
    running, _ = short
    content = jsonl([{"model": "test-image", "prompt": "three deer", "n": ASKED}])
    with openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        uploaded = sdk.files.create(file=("in.jsonl", content), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id,
                                   endpoint="/v1/images/generations", completion_window="24h")
        done = finished(sdk, batch.id)
        assert done.request_counts is not None and done.request_counts.completed == 1
        (line,) = lines_of(sdk, done.output_file_id)
    response = line["response"]
    assert response["status_code"] == 200
    validate("ImagesResponse", response["body"])
    assert_images(response["body"]["data"])
    assert_billed_as_delivered(entry(running, response["request_id"]))


def test_stream_sends_an_event_per_delivered_image_and_bills_them(
        short: tuple[Running, Wrapped], validate: Callable[[str, Any], None]) -> None:
    running, _ = short
    with openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        got = list(sdk.images.generate(model="test-image", prompt="three crows", n=ASKED,
                                       stream=True))
    assert [type(event) for event in got] == [ImageGenCompletedEvent] * DELIVERED
    for event in got:
        validate("ImageGenCompletedEvent", event.model_dump(exclude_none=True))
        assert base64.b64decode(event.b64_json).startswith(b"\x89PNG")
    last = got[-1].model_extra
    assert last is not None
    said = last["switchyard"]
    assert said["billed_usd"] == "0.040000" and said["provider"] == "sim-cheap"
    # The stream's request id is the ledger's key.
    with running.store() as store:
        rows = store.db.query("SELECT request_id FROM ledger")
    (request_id,) = (row[0] for row in rows)
    assert_billed_as_delivered(entry(running, request_id))


def test_a_budget_is_charged_only_for_the_delivered_images(
        short: tuple[Running, Wrapped]) -> None:
    """The quote reserved n images; the settle keeps only what was delivered."""
    running, _ = short
    key = running.new_key("budget", KeyLimits(budget_usd=Decimal("1")))
    with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        sdk.images.generate(model="test-image", prompt="three bats", n=ASKED)
    deadline = time.monotonic() + 5
    with running.store() as store:
        key_id = store.list_keys()[-1].id
        while time.monotonic() < deadline:
            if store.money.spent(key_id, "total") == (Decimal("0.04"), Decimal(0)):
                break
            time.sleep(0.05)
        assert store.money.spent(key_id, "total") == (Decimal("0.04"), Decimal(0))


def test_chat_stream_sends_a_choice_per_delivered_image(short: tuple[Running, Wrapped]) -> None:
    """The chat surface's stream too: one choice per delivered image, the cost of those."""
    running, _ = short
    with openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        chunks = list(sdk.chat.completions.create(
            model="test-image", messages=[{"role": "user", "content": "three moths"}],
            n=ASKED, stream=True, stream_options={"include_usage": True}))
    with_images = {choice.index for chunk in chunks for choice in chunk.choices
                   if choice.delta.model_extra and choice.delta.model_extra.get("images")}
    assert with_images == set(range(DELIVERED))
    usage = next(chunk.usage for chunk in chunks if chunk.usage is not None)
    assert usage.model_extra is not None and float(usage.model_extra["cost"]) == 0.04
    with running.store() as store:
        (request_id,) = (row[0] for row in store.db.query("SELECT request_id FROM ledger"))
    assert_billed_as_delivered(entry(running, request_id))
