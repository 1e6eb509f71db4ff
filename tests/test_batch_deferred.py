"""A Batch API job whose window allows it goes to the Gemini Batch API at half price, gathered
into shared upstream batches; interactive requests of the same model never do; and a server
restarted while the batch runs upstream waits for it instead of sending the items again."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai

from proxy.billing.store import Store
from proxy.catalog import Catalog
from proxy.config import Config
from proxy.providers.grouping import SENDING
from tests import protocol_kit as kit
from tests.conftest import make_config, serve
from tests.fakes.gemini import FakeGemini
from tests.fakes.gemini_batch import FakeGeminiBatch
from tests.test_batches import ENDPOINT, finished, jsonl, lines_of

PROVIDERS = """
[google]
protocol = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"

[google-batch]
protocol = "gemini_batch"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"
deferred = true
max_in_flight = 1000
options = { poll_s = 0.05, gather_s = 0.3 }
"""

ROUTES = """
[[routes]]
provider = "google"
upstream_model = "gemini-3.1-flash-image"
typical_latency_s = 12
price.per_token = { usd_per_million = 60, tokens = { "1K" = 1120 } }

[[routes]]
provider = "google-batch"
upstream_model = "gemini-3.1-flash-image"
typical_latency_s = 1800
price.per_token = { usd_per_million = 30, tokens = { "1K" = 1120 } }
"""
ITEMS = 40
CREATE_S = 0.5  # how long the fake Batch API takes to answer a create


class SlowCreates(FakeGeminiBatch):
    """Answers a create only after CREATE_S: the members remember the job's label (written
    before its create is sent) well before they remember its name."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(":batchGenerateContent"):
            await asyncio.sleep(CREATE_S)
        return await super().handle_async_request(request)


def catalog(tmp_path: Path) -> Catalog:
    return kit.write_catalog(tmp_path / "routes", PROVIDERS,
                             {"nano-banana-2": kit.nano_banana_2(ROUTES)},
                             {"GEMINI_API_KEY": "test-key"})


def test_patient_items_ride_shared_batches_at_half_price_and_survive_a_restart(
        tmp_path: Path) -> None:
    routes, config = catalog(tmp_path), make_config(tmp_path / "data")
    upstream = SlowCreates()
    fakes = {"google": FakeGemini(), "google-batch": upstream}
    upstream.hold = True  # the batch is still running upstream when the server stops
    with Store(config.database) as store:
        key = store.create_key("catalog")[1]
    content = jsonl([{"model": "nano-banana-2", "prompt": f"sku {i}", "size": "1024x1024"}
                     for i in range(ITEMS)])
    with serve(config, routes, fakes) as running, \
            openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        batch = sdk.batches.create(input_file_id=sdk.files.create(
            file=("in.jsonl", content), purpose="batch").id, endpoint=ENDPOINT,
            completion_window="24h")
        deadline = time.monotonic() + 20
        while _named(config) < ITEMS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.creates >= 1 and _named(config) == ITEMS
    created = upstream.creates
    upstream.hold = False
    with serve(config, routes, fakes) as running, \
            openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        done = finished(sdk, batch.id, within_s=60)
        output, errors = lines_of(sdk, done.output_file_id), lines_of(sdk, done.error_file_id)
        # The same model asked interactively never waits for a batch.
        raw = sdk.images.with_raw_response.generate(model="nano-banana-2", prompt="now")
        assert raw.headers["x-switchyard-provider"] == "google"
    assert upstream.creates == created, "nothing sent again after the restart"
    assert created <= 2, "forty items went up in shared batches, not one each"
    sent = [r["metadata"]["key"] for b in upstream.batches.values() for r in b.requests]
    assert len(sent) == len(set(sent)) == ITEMS, "each item generated once"
    assert len(output) == ITEMS and not errors
    assert {line["response"]["status_code"] for line in output} == {200}
    with Store(config.database) as store:
        rows = store.db.query("SELECT provider, upstream_micros FROM ledger "
                              "WHERE outcome = 'success' AND provider = 'google-batch'")
    assert len(rows) == ITEMS, "each item billed once"
    # 1120 image tokens at $30 per million: half the interactive route's $0.0672.
    assert {Decimal(r[1]) / 1_000_000 for r in rows} == {Decimal("0.0336")}


def _named(config: Config) -> int:
    """Items that remember their upstream job by its name, known once its create answered.
    Before the create is sent each remembers the job's label (SENDING + label): counting
    those too, the wait ended before the create had gone out, and the server was stopped
    with no create sent at all (a flake under load)."""
    with Store(config.database) as store:
        return int(store.db.query("SELECT COUNT(*) FROM jobs WHERE upstream_ref IS NOT NULL "
                                  "AND upstream_ref NOT LIKE ?", (SENDING + "%",))[0][0])
