"""The shipped catalog (routes/): every provider protocol is there, each switches on with its
key alone, and each host serves a real request end to end through the official SDK."""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image as PILImage

from proxy import catalog as catalog_module
from proxy.catalog import Catalog
from proxy.config import default_routes_dir
from proxy.providers import ADAPTERS, check_routes
from tests.conftest import make_config, serve
from tests.fakes.byteplus import FakeBytePlus
from tests.fakes.fal import FakeFal
from tests.fakes.gemini import FakeGemini
from tests.fakes.kie import FakeKie
from tests.fakes.openai_images import FakeOpenAIImages
from tests.fakes.replicate import FakeReplicate
from tests.fakes.segmind import FakeSegmind
from tests.fakes.task_hosts import FakeApiPass, FakeNewportAI, FakeOpenOctopus, FakeToapis
from tests.fakes.together import FakeTogether
from tests.fakes.wavespeed import FakeWaveSpeed

ROUTES = default_routes_dir()
ISSUE_PROTOCOLS = {"gemini", "vertex", "openai_images", "replicate", "fal", "together",
                   "byteplus"}
# The GA id and retired preview id of each Nano Banana model: both must resolve to it.
NANO_BANANA = {"nano-banana": "gemini-2.5-flash-image",
               "nano-banana-pro": "gemini-3-pro-image",
               "nano-banana-2": "gemini-3.1-flash-image"}


def load(env: Mapping[str, str], demo: bool | None = None) -> Catalog:
    return catalog_module.load(ROUTES, env, demo, ADAPTERS)


def quick(catalog: Catalog) -> Catalog:
    """The catalog with polling sped up (the shipped pacing suits real hosts, not fakes)."""
    fast = {"poll_interval_s": 0.01, "poll_interval_max_s": 0.02}
    models = [replace(m, routes=tuple(
        replace(r, provider=replace(r.provider, options={**r.provider.options, **fast}))
        for r in m.routes)) for m in catalog.models]
    providers = {r.provider.name: r.provider for m in models for r in m.routes}
    return catalog_module._index(models, list(providers.values()), catalog.demo)


def everything() -> list[catalog_module.Model]:
    return catalog_module.inventory(ROUTES, {}, ADAPTERS)


def test_every_protocol_of_the_catalog_is_shipped_with_a_key_variable() -> None:
    providers = {r.provider.name: r.provider for m in everything() for r in m.routes}
    assert {p.protocol for p in providers.values()} >= ISSUE_PROTOCOLS
    real = [p for p in providers.values() if p.protocol != "simulated"]
    assert all(p.key_env and p.base_url.startswith("https://") for p in real)
    # google-batch is Google's own Batch API: the same account and key as `google`, on purpose.
    own = [p for p in real if p.name != "google-batch"]
    assert len({p.key_env for p in own}) == len(own), "two providers share a key variable"


@pytest.mark.parametrize("name", sorted(NANO_BANANA))
def test_nano_banana_models_answer_to_their_ga_and_preview_ids(name: str) -> None:
    live = load({"GEMINI_API_KEY": "k"})
    ga = NANO_BANANA[name]
    model = live.resolve(name)
    assert model is not None and model is live.resolve(ga) is live.resolve(f"{ga}-preview")
    google = next(r for r in model.routes if r.provider.name == "google")
    assert google.upstream_model == ga


# Nano Banana 2 per image at 1K / 2K / 4K, as our providers' price sheet gives it for the hosts
# that bill per image (shared/providers/README.md): a route priced below its bill is routed to
# first and bills a pass-through tenant less than it costs.
SHEET_NANO_BANANA_2 = {
    "together": ("0.10", "0.15", "0.20"), "segmind": ("0.084", "0.126", "0.168"),
    "replicate": ("0.067", "0.101", "0.151"), "toapis": ("0.065", "0.098", "0.145"),
    "apertis": ("0.055", "0.085", "0.125"),
}


@pytest.mark.parametrize("host", sorted(SHEET_NANO_BANANA_2))
def test_nano_banana_2_per_image_hosts_are_priced_as_the_sheet_says(host: str) -> None:
    (model,) = [m for m in everything() if m.name == "nano-banana-2"]
    (route,) = [r for r in model.routes if r.provider.name == host]
    assert [route.price_per_image[tier] for tier in ("1K", "2K", "4K")] == \
        [Decimal(price) for price in SHEET_NANO_BANANA_2[host]]


def test_every_shipped_route_passes_its_protocols_checks() -> None:
    assert check_routes(everything()) == []


def test_without_keys_only_the_simulated_demo_is_live() -> None:
    live = load({})
    assert live.demo
    assert {r.provider.protocol for m in live.models for r in m.routes} == {"simulated"}


# A key variable -> the providers it switches on (Google's key serves its Batch API too).
KEYS = {"GEMINI_API_KEY": "google google-batch", "VERTEX_API_KEY": "vertex",
        "OPENAI_API_KEY": "openai", "REPLICATE_API_TOKEN": "replicate", "FAL_KEY": "fal",
        "TOGETHER_API_KEY": "together",
        "ARK_API_KEY": "byteplus", "TOAPIS_API_KEY": "toapis",
        "OPENOCTOPUS_API_KEY": "openoctopus", "NEWPORTAI_API_KEY": "newportai",
        "APIPASS_API_KEY": "apipass", "SEGMIND_API_KEY": "segmind",
        "WAVESPEED_API_KEY": "wavespeed", "KIE_API_KEY": "kie",
        "APERTIS_API_KEY": "apertis"}


@pytest.mark.parametrize("variable", sorted(KEYS))
def test_a_key_alone_switches_its_provider_on_and_the_demo_off(variable: str) -> None:
    live = load({variable: "secret"})
    assert not live.demo
    assert {p.name for p in live.providers} == set(KEYS[variable].split())
    assert live.models and all(r.provider.key is not None for m in live.models
                               for r in m.routes)


def test_vertex_with_a_project_needs_the_project_and_a_token_or_command() -> None:
    assert not load({"VERTEX_TOKEN_COMMAND": "echo t"}, demo=False).providers
    assert not load({"GOOGLE_CLOUD_PROJECT": "p"}, demo=False).providers
    live = load({"VERTEX_TOKEN_COMMAND": "echo t", "GOOGLE_CLOUD_PROJECT": "p"})
    (provider,) = live.providers
    assert provider.name == "vertex-project"
    assert provider.options["project"] == "p" and provider.options["token_command"] == "echo t"


def decode(b64: str | None) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(base64.b64decode(b64 or "")))
    image.load()
    return image


Start = Callable[[Mapping[str, str], Mapping[str, httpx.AsyncBaseTransport]], openai.OpenAI]


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    """Start Switchyard on the shipped catalog with the given environment and fake upstreams."""
    count = iter(range(100))
    with contextlib.ExitStack() as stack:
        def start(env: Mapping[str, str],
                  fakes: Mapping[str, httpx.AsyncBaseTransport]) -> openai.OpenAI:
            n = next(count)
            config = make_config(tmp_path / f"data{n}")
            running = stack.enter_context(serve(config, quick(load(env, demo=False)), fakes))
            return stack.enter_context(openai.OpenAI(base_url=running.v1,
                                                     api_key=running.new_key(), max_retries=0))
        yield start


# provider -> (the environment that makes it live, a fresh fake of it)
HOSTS: dict[str, tuple[dict[str, str], Callable[[], httpx.AsyncBaseTransport]]] = {
    "google": ({"GEMINI_API_KEY": "test-key"}, lambda: FakeGemini()),
    "vertex": ({"VERTEX_API_KEY": "test-key"}, lambda: FakeGemini(vertex=True)),
    "replicate": ({"REPLICATE_API_TOKEN": "test-key"},
                  lambda: FakeReplicate(wait_finishes=True)),
    "fal": ({"FAL_KEY": "test-key"}, lambda: FakeFal(states=("COMPLETED",))),
    "together": ({"TOGETHER_API_KEY": "test-key"}, lambda: FakeTogether()),
    "toapis": ({"TOAPIS_API_KEY": "test-key"}, lambda: FakeToapis()),
    "openoctopus": ({"OPENOCTOPUS_API_KEY": "test-key"}, lambda: FakeOpenOctopus()),
    "newportai": ({"NEWPORTAI_API_KEY": "test-key"}, lambda: FakeNewportAI()),
    "apipass": ({"APIPASS_API_KEY": "test-key"}, lambda: FakeApiPass()),
    "segmind": ({"SEGMIND_API_KEY": "test-key"}, lambda: FakeSegmind()),
    "wavespeed": ({"WAVESPEED_API_KEY": "test-key"}, lambda: FakeWaveSpeed()),
    "kie": ({"KIE_API_KEY": "test-key"}, lambda: FakeKie(states=("success",))),
    "apertis": ({"APERTIS_API_KEY": "test-key"}, lambda: FakeOpenAIImages()),
    "byteplus": ({"ARK_API_KEY": "test-key"}, lambda: FakeBytePlus()),
}


@pytest.mark.parametrize("provider", sorted(HOSTS))
def test_each_nano_banana_2_host_serves_the_same_request(
        provider: str, switchyard: Start, validate: Callable[[str, Any], None]) -> None:
    env, make_fake = HOSTS[provider]
    sdk = switchyard(env, {provider: make_fake()})
    raw = sdk.images.with_raw_response.generate(model="nano-banana-2", prompt="a red fox",
                                                size="1024x1024", output_format="png")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == provider
    route = next(r for r in load(env).resolve("nano-banana-2").routes  # type: ignore[union-attr]
                 if r.provider.name == provider)
    cost, image_price = Decimal(raw.headers["x-switchyard-cost-usd"]), route.price_per_image["1K"]
    if route.token_rates is not None and route.token_rates.input:
        # Google's bill: the image's tokens, a prompt of three words and five of text out.
        assert image_price < cost < image_price + Decimal("0.00005")
    else:
        assert cost == image_price
    image = decode(raw.parse().data[0].b64_json)  # type: ignore[index]
    assert image.format == "PNG" and image.size == (1024, 1024)


def test_gpt_image_2_through_openai(switchyard: Start,
                                    validate: Callable[[str, Any], None]) -> None:
    fake = FakeOpenAIImages()
    sdk = switchyard({"OPENAI_API_KEY": "test-key"}, {"openai": fake})
    raw = sdk.images.with_raw_response.generate(model="gpt-image-2", prompt="a red fox",
                                                size="1536x1024", output_format="webp")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "openai"
    image = decode(raw.parse().data[0].b64_json)  # type: ignore[index]
    assert image.format == "WEBP" and image.size == (1536, 1024)
    assert fake.requests[0].json["model"] == "gpt-image-2"


def test_vertex_token_command_supplies_the_bearer_token(switchyard: Start, tmp_path: Path
                                                        ) -> None:
    fake = FakeGemini(vertex=True, tokens=("tok-from-command",), project="proj-9")
    env = {"VERTEX_TOKEN_COMMAND": "echo tok-from-command", "GOOGLE_CLOUD_PROJECT": "proj-9",
           "PATH": os.environ.get("PATH", "")}
    sdk = switchyard(env, {"vertex-project": fake})
    result = sdk.images.generate(model="nano-banana-pro", prompt="a red fox", size="1024x1024")
    assert decode(result.data[0].b64_json).size == (1024, 1024)  # type: ignore[index]
    seen = fake.seen[0]
    assert seen.headers["authorization"] == "Bearer tok-from-command"
    assert "/projects/proj-9/locations/global/" in str(seen.url)


def test_together_gets_only_sizes_from_its_list(switchyard: Start) -> None:
    fake = FakeTogether()
    sdk = switchyard({"TOGETHER_API_KEY": "test-key"}, {"together": fake})
    raw = sdk.images.with_raw_response.generate(
        model="nano-banana-2", prompt="a red fox", extra_body={"aspect_ratio": "16:9"})
    sent = fake.requests[0].json
    assert (sent["width"], sent["height"]) == (1344, 768)
    assert raw.headers["x-switchyard-size"] == "1344x768"
