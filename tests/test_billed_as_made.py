"""What a token-priced host charged, billed exactly: for the images delivered when the host
made more than were asked, for every image when only some of a request's calls said their
image tokens, and at the tier Google served when its Priority lane fell back to standard."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.billing.amounts import micros
from proxy.config import default_routes_dir
from proxy.domain import InputImage
from proxy.providers.resume import Resume
from tests import protocol_kit as kit
from tests.conftest import make_config, serve
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai_images import image_b64, image_bytes

OPENAI = """
[openai]
protocol = "openai_images"
base_url = "https://api.openai.com/v1"
key_env = "OPENAI_API_KEY"
"""
FLARE = """
name = "gpt-image-2.5-flare"
created = 2026-09-08
[capabilities]
aspect_ratios = ["1:1"]
max_n = 10
output_formats = ["png"]
qualities = ["auto", "low", "medium", "high"]

[[routes]]
provider = "openai"
upstream_model = "gpt-image-2.5-flare"
typical_latency_s = 15
price.per_token = { usd_per_million = 30, tokens = { "1K" = 1756 } }
price.quality = { low = 0.112, medium = 0.25 }
options.sizes = ["1024x1024"]
"""
MEDIUM = 439  # output image tokens of one 1024x1024 image at quality medium
GOOGLE = """
[google]
protocol = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"

[google-priority]
protocol = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"
lane = "priority"
options = { service_tier = "priority", standard_tier_factor = 0.5 }
"""
BANANA = """
name = "nano-banana-2"
created = 2026-02-26
[capabilities]
aspect_ratios = ["1:1"]
max_n = 4
output_formats = ["png"]

[[routes]]
provider = "{provider}"
upstream_model = "gemini-3.1-flash-image"
typical_latency_s = 12
price.per_token = {{ usd_per_million = {rate}, tokens = {{ "1K" = 1120 }} }}
"""
ONE_1K_IMAGE = 67_200  # micro-dollars: 1120 tokens at $60/M


class TooMany(httpx.AsyncBaseTransport):
    """An OpenAI-shaped host that makes n + 1 images and reports the tokens of all it made."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fields: dict[str, Any] = orjson.loads(await request.aread())
        made = int(fields.get("n", 1)) + 1
        tokens = MEDIUM * made
        return httpx.Response(200, json={
            "created": int(time.time()), "size": "1024x1024", "quality": "medium",
            "data": [{"b64_json": image_b64(1024, 1024, "png", str(i))} for i in range(made)],
            "usage": {"input_tokens": 20, "output_tokens": tokens, "total_tokens": tokens + 20,
                      "input_tokens_details": {"text_tokens": 20, "image_tokens": 0},
                      "output_tokens_details": {"image_tokens": tokens, "text_tokens": 0}}})


class Unsplit(FakeGemini):
    """Every `every`-th reply's usageMetadata has no per-modality split of its output tokens
    (as Google's own Batch example answers); `prompt_tokens`: the last reply's input."""

    def __init__(self, every: int = 1) -> None:
        super().__init__()
        self.every, self.answered, self.prompt_tokens = every, 0, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        reply = await super().handle_async_request(request)
        self.answered += 1
        body = orjson.loads(await reply.aread())
        self.prompt_tokens = body["usageMetadata"]["promptTokenCount"]
        if self.answered % self.every == 0:
            body["usageMetadata"].pop("candidatesTokensDetails", None)
        return httpx.Response(200, json=body)


class Served(FakeGemini):
    """Says in x-gemini-service-tier which tier served the call."""

    def __init__(self, tier: str) -> None:
        super().__init__()
        self.tier = tier

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert orjson.loads(await request.aread()).get("serviceTier") == "priority"
        reply = await super().handle_async_request(request)
        headers = {k: v for k, v in reply.headers.items() if k != "content-length"}
        return httpx.Response(reply.status_code, content=await reply.aread(),
                              headers={**headers, "x-gemini-service-tier": self.tier})


def _generate(tmp_path: Path, providers: str, model: str, text: str, transport: Any,
              **asked: Any) -> tuple[httpx.Headers, Any]:
    catalog = kit.write_catalog(tmp_path / "routes", providers, {model: text},
                                {"OPENAI_API_KEY": "test-key", "GEMINI_API_KEY": "test-key"})
    provider = "openai" if "openai" in providers else \
        ("google-priority" if "google-priority" in text else "google")
    with serve(make_config(tmp_path / "data"), catalog, {provider: transport}) as running:
        with openai.OpenAI(base_url=running.v1, api_key=running.new_key(),
                           max_retries=0) as sdk:
            raw = sdk.images.with_raw_response.generate(model=model, prompt="a red fox",
                                                        size="1024x1024", **asked)
        with running.store() as store:
            row = store.money.entry(raw.headers["x-request-id"])
    assert row is not None and row.outcome == "success"
    assert row.n_delivered == len(raw.http_response.json()["data"])
    return raw.headers, row


def test_images_cut_to_n_are_not_the_tenants_to_pay(tmp_path: Path) -> None:
    headers, row = _generate(tmp_path, OPENAI, "gpt-image-2.5-flare", FLARE, TooMany())
    assert row.n_delivered == 1
    assert row.billed_micros == MEDIUM * 30, headers["x-switchyard-billed-usd"]
    assert row.upstream_micros == 2 * MEDIUM * 30  # what the host charged: both it made


def test_calls_that_did_not_all_say_their_image_tokens_bill_every_image(tmp_path: Path) -> None:
    banana = BANANA.format(provider="google", rate=60)
    headers, row = _generate(tmp_path, GOOGLE, "nano-banana-2", banana, Unsplit(every=2), n=2)
    assert row.n_delivered == 2
    assert row.billed_micros == 2 * ONE_1K_IMAGE, headers["x-switchyard-billed-usd"]
    assert row.upstream_micros == 2 * ONE_1K_IMAGE


def test_a_priority_call_served_at_the_standard_tier_is_billed_at_it(tmp_path: Path) -> None:
    banana = BANANA.format(provider="google-priority", rate=120)
    headers, row = _generate(tmp_path, GOOGLE, "nano-banana-2", banana, Served("standard"))
    assert Decimal(headers["x-switchyard-cost-usd"]) == Decimal("0.0672")
    assert row.upstream_micros == ONE_1K_IMAGE and row.billed_micros == ONE_1K_IMAGE


def test_a_priority_call_served_at_priority_is_billed_at_it(tmp_path: Path) -> None:
    banana = BANANA.format(provider="google-priority", rate=120)
    _, row = _generate(tmp_path, GOOGLE, "nano-banana-2", banana, Served("priority"))
    assert row.upstream_micros == 2 * ONE_1K_IMAGE and row.billed_micros == 2 * ONE_1K_IMAGE


PRO = """
name = "nano-banana-pro"
created = 2025-11-20
[capabilities]
aspect_ratios = ["1:1"]
max_n = 4
edits = true
max_reference_images = 14
output_formats = ["png"]

[[routes]]
provider = "google"
upstream_model = "gemini-3-pro-image"
typical_latency_s = 25
price.per_token = {{ usd_per_million = 120, {input}, tokens = {{ "1K" = 1120 }} }}
""".format(input="input_usd_per_million = 2, text_usd_per_million = 12, "
           "input_tokens_per_image = 560, text_tokens_per_call = 500")


def test_an_edits_input_and_text_tokens_are_billed_as_google_bills_them(tmp_path: Path) -> None:
    catalog = kit.write_catalog(tmp_path / "routes", GOOGLE, {"nano-banana-pro": PRO},
                                {"GEMINI_API_KEY": "test-key"})
    prompt = "put the eight of them on one poster"
    with serve(make_config(tmp_path / "data"), catalog, {"google": FakeGemini()}) as running:
        with openai.OpenAI(base_url=running.v1, api_key=running.new_key(),
                           max_retries=0) as sdk:
            raw = sdk.images.with_raw_response.edit(
                model="nano-banana-pro", prompt=prompt, size="1024x1024",
                image=[(f"ref{i}.png", image_bytes(64, 64, "png", str(i)), "image/png")
                       for i in range(8)])
        with running.store() as store:
            row = store.money.entry(raw.headers["x-request-id"])
    assert row is not None and row.outcome == "success"
    # What the fake (as Google) reported: 560 input tokens per reference and one per word of
    # the prompt, 1120 output image tokens and 5 of text.
    tokens_in = 8 * 560 + len(prompt.split())
    charged = 1120 * 120 + 5 * 12 + tokens_in * 2  # micro-dollars, at $/M
    assert row.upstream_micros == charged
    assert row.billed_micros == charged  # the quote covered it: nothing capped away
    quoted = 1120 * 120 + (8 * 560 + -(-len(prompt) // 3)) * 2 + 500 * 12
    assert raw.headers["x-switchyard-quote-usd"] == f"{quoted / 1e6:.6f}"


def _pro_edit(tmp_path: Path, fake: FakeGemini, references: int,
              **extra: Any) -> tuple[httpx.Headers, Any]:
    catalog = kit.write_catalog(tmp_path / "routes", GOOGLE, {"nano-banana-pro": PRO},
                                {"GEMINI_API_KEY": "test-key"})
    with serve(make_config(tmp_path / "data"), catalog, {"google": fake}) as running:
        with openai.OpenAI(base_url=running.v1, api_key=running.new_key(),
                           max_retries=0) as sdk:
            raw = sdk.images.with_raw_response.edit(
                model="nano-banana-pro", prompt="put them on one poster", size="1024x1024",
                image=[(f"r{i}.png", image_bytes(64, 64, "png", str(i)), "image/png")
                       for i in range(references)], extra_body=extra or None)
        with running.store() as store:
            row = store.money.entry(raw.headers["x-request-id"])
    assert row is not None and row.outcome == "success"
    return raw.headers, row


def test_the_input_google_reported_is_billed_without_the_output_split(tmp_path: Path) -> None:
    fake = Unsplit()
    _, row = _pro_edit(tmp_path, fake, 8)
    assert row.upstream_micros == 1120 * 120 + fake.prompt_tokens * 2


def test_a_thinking_models_thoughts_are_quoted_and_billed(tmp_path: Path) -> None:
    headers, row = _pro_edit(tmp_path, FakeGemini().then("thoughts"), 1)
    assert row.attempts == 1 and row.billed_micros == row.upstream_micros
    assert Decimal(headers["x-switchyard-quote-usd"]) * 1_000_000 > row.upstream_micros


def test_max_price_is_all_an_image_costs(tmp_path: Path) -> None:
    # The route's image price is $0.1344 at 1K; quoted with its input and thoughts, $0.1494
    # with eight references and $0.1415 with one.
    with pytest.raises(openai.BadRequestError) as refused:
        _pro_edit(tmp_path / "8", FakeGemini(), 8, route={"max_price": 0.145})
    assert refused.value.param == "route.max_price"
    _, row = _pro_edit(tmp_path / "1", FakeGemini(), 1, route={"max_price": 0.145})
    assert row.billed_micros <= 145_000


def test_a_cache_hit_of_a_cut_answer_costs_what_the_miss_did(tmp_path: Path) -> None:
    catalog = kit.write_catalog(tmp_path / "routes", OPENAI, {"gpt-image-2.5-flare": FLARE},
                                {"OPENAI_API_KEY": "test-key"})
    with serve(make_config(tmp_path / "data"), catalog, {"openai": TooMany()}) as running, \
            openai.OpenAI(base_url=running.v1, api_key=running.new_key(),
                          max_retries=0) as sdk:
        answers = [sdk.images.with_raw_response.generate(
            model="gpt-image-2.5-flare", prompt="a red fox", size="1024x1024",
            extra_body={"cache": {"ttl_s": 3600}}).headers for _ in range(2)]
    assert [(h["x-switchyard-cache"], h["x-switchyard-billed-usd"]) for h in answers] == \
        [("miss", f"{MEDIUM * 30 / 1e6:.6f}"), ("hit", f"{MEDIUM * 30 / 1e6:.6f}")]


def test_an_abandoned_calls_upstream_spend_is_its_quote(tmp_path: Path) -> None:
    catalog = kit.write_catalog(tmp_path / "routes", GOOGLE, {"nano-banana-pro": PRO},
                                {"GEMINI_API_KEY": "test-key"})
    (route,) = catalog.resolve("nano-banana-pro").routes  # type: ignore[union-attr]
    request = kit.edit_request(*[InputImage("image/png", data=kit.PNG)] * 8,
                               model="nano-banana-pro")
    call = Resume(None, None, "imgjob_x")._call(route, request, 0, 0)  # type: ignore[arg-type]
    assert call.upstream_micros == micros(route.quote(request)) > micros(
        route.unit_price("1K"))


def _google_route_only(model: str) -> str:
    """A shipped model's file with its first route (Google's) alone."""
    head, first, *_ = (default_routes_dir() / "models" / f"{model}.toml").read_text() \
        .split("[[routes]]")
    return f"{head}[[routes]]{first}"


@pytest.mark.parametrize("model", ["nano-banana", "nano-banana-2", "nano-banana-pro"])
def test_the_shipped_google_quotes_cover_references_and_thoughts(tmp_path: Path,
                                                                 model: str) -> None:
    """Every shipped Google route bills its input and text, and quotes enough of both that
    the bill, never more than the quote, is what Google charged."""
    catalog = kit.write_catalog(tmp_path / "routes", GOOGLE, {model: _google_route_only(model)},
                                {"GEMINI_API_KEY": "test-key"})
    with serve(make_config(tmp_path / "data"), catalog,
               {"google": FakeGemini().then("thoughts")}) as running:
        with openai.OpenAI(base_url=running.v1, api_key=running.new_key(),
                           max_retries=0) as sdk:
            raw = sdk.images.with_raw_response.edit(
                model=model, prompt="put them on one poster", size="1024x1024",
                image=[(f"r{i}.png", image_bytes(64, 64, "png", str(i)), "image/png")
                       for i in range(3)])
        with running.store() as store:
            row = store.money.entry(raw.headers["x-request-id"])
    assert row is not None and row.outcome == "success"
    assert row.billed_micros == row.upstream_micros
