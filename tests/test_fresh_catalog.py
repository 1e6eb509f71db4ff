"""The catalog's newer models (issue 22.4): Nano Banana 2 Lite and 2.1, GPT Image 2.5 and 2.6.

Each loads with its ids and positive prices, switches on with its host's key, and its new
parameters reach the wire through its adapter against the host's fake: a new model id, an
imageSize or ratio the older models lack, `quality` xhigh/max. A value no route serves is a 400
that names the parameter, and nothing reaches a host.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from proxy.catalog import Model
from tests import test_shipped_routes as shipped
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai_images import FakeOpenAIImages
from tests.fakes.task_hosts import FakeToapis
from tests.test_shipped_routes import Start, decode, everything, load

switchyard = shipped.switchyard  # the fixture: Switchyard on the shipped routes and fakes

# public name -> (an alias it answers to, the key variable that switches its first host on)
NEW_MODELS = {
    "nano-banana-2-lite": ("gemini-3.1-flash-lite-image", "GEMINI_API_KEY"),
    "nano-banana-2.1": ("gemini-nano-banana-2.1", "GEMINI_API_KEY"),
    "gpt-image-2.5-flare": ("gpt-image-2.5-flare-2026-09-08", "OPENAI_API_KEY"),
    "gpt-image-2.5-sunburst": ("gpt-image-2.5-sunburst-2026-09-08", "OPENAI_API_KEY"),
    "gpt-image-2.6-flare": (None, "OPENAI_API_KEY"),
    "gpt-image-2.6-sunburst": (None, "OPENAI_API_KEY"),
}
GEMINI = {"GEMINI_API_KEY": "test-key"}
OPENAI = {"OPENAI_API_KEY": "test-key"}


def param_of(exc: openai.BadRequestError) -> Any:
    return exc.body.get("param") if isinstance(exc.body, dict) else None


@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_each_new_model_loads_and_answers_to_its_ids(name: str) -> None:
    alias, variable = NEW_MODELS[name]
    live = load({variable: "secret"})
    model = live.resolve(name)
    assert model is not None and model.routes
    if alias:
        assert live.resolve(alias) is model
    shipped = next(m for m in everything() if m.name == name)
    assert all(price > 0 for route in shipped.routes
               for price in route.price_per_image.values())


@pytest.mark.parametrize("model", everything(), ids=lambda m: m.name)
def test_every_shipped_price_is_positive_at_every_quality(model: Model) -> None:
    for route in model.routes:
        assert route.price_per_image, route.id
        for tier in route.price_per_image:
            for quality in route.capabilities.qualities:
                assert route.unit_price(tier, quality) > 0, (route.id, tier, quality)


def test_nano_banana_2_1_reaches_google_with_its_id_and_2k(switchyard: Start) -> None:
    fake = FakeGemini()
    sdk = switchyard(GEMINI, {"google": fake})
    raw = sdk.images.with_raw_response.generate(
        model="nano-banana-2.1", prompt="a red fox", extra_body={"resolution": "2K"})
    seen = fake.seen[0]
    assert seen.url.path.endswith("/models/gemini-nano-banana-2.1:generateContent")
    assert seen.json["generationConfig"]["imageConfig"]["imageSize"] == "2K"
    # 1680 output image tokens (the fake's usage) at $30 per million.
    assert raw.headers["x-switchyard-cost-usd"] == "0.050400"
    assert decode(raw.parse().data[0].b64_json).size == (2048, 2048)  # type: ignore[index]


def test_nano_banana_2_lite_takes_the_extreme_ratios_at_1k_only(switchyard: Start) -> None:
    fake = FakeGemini()
    sdk = switchyard(GEMINI, {"google": fake})
    result = sdk.images.generate(model="nano-banana-2-lite", prompt="a tall lighthouse",
                                 extra_body={"aspect_ratio": "1:8"})
    config = fake.seen[0].json["generationConfig"]["imageConfig"]
    assert fake.seen[0].url.path.endswith("/models/gemini-3.1-flash-lite-image:generateContent")
    assert config == {"aspectRatio": "1:8", "imageSize": "1K"}
    width, height = decode(result.data[0].b64_json).size  # type: ignore[index]
    assert height > 7 * width
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="nano-banana-2-lite", prompt="x",
                            extra_body={"resolution": "2K"})
    assert param_of(caught.value) == "resolution" and len(fake.seen) == 1


def test_nano_banana_2_1_has_no_half_k_tier(switchyard: Start) -> None:
    fake = FakeGemini()
    sdk = switchyard(GEMINI, {"google": fake})
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="nano-banana-2.1", prompt="x",
                            extra_body={"resolution": "0.5K"})
    assert param_of(caught.value) == "resolution" and not fake.seen


@pytest.mark.parametrize("quality, factor", [("max", "4"), ("xhigh", "1.778"), ("low", "0.112")])
def test_gpt_image_2_5_quality_reaches_openai_and_its_quote(
        quality: str, factor: str, switchyard: Start) -> None:
    fake = FakeOpenAIImages()
    sdk = switchyard(OPENAI, {"openai": fake})
    raw = sdk.images.with_raw_response.generate(
        model="gpt-image-2.5-flare-2026-09-08", prompt="a red fox", size="1536x1024",
        quality=quality)  # type: ignore[arg-type]
    sent = fake.requests[0].json
    assert (sent["model"], sent["quality"], sent["size"]) == \
        ("gpt-image-2.5-flare", quality, "1536x1024")
    # Quoted at 1756 tokens x $30/M times the quality's factor; billed from the reported usage
    # (the fake's 4100 image tokens), never above the quote.
    quote = Decimal("0.05268") * Decimal(factor)
    assert Decimal(raw.headers["x-switchyard-quote-usd"]) == quote.quantize(Decimal("1e-6"))
    assert raw.headers["x-switchyard-cost-usd"] == "0.123000"
    assert Decimal(raw.headers["x-switchyard-billed-usd"]) <= quote
    assert decode(raw.parse().data[0].b64_json).size == (1536, 1024)  # type: ignore[index]


@pytest.mark.parametrize("model, quality", [("gpt-image-2", "max"),
                                            ("gpt-image-2.6-sunburst", "xhigh"),
                                            ("gpt-image-2.5-flare", "ultra")])
def test_a_quality_no_route_serves_is_a_400_naming_quality(
        model: str, quality: str, switchyard: Start) -> None:
    fake = FakeOpenAIImages()
    sdk = switchyard(OPENAI, {"openai": fake})
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model=model, prompt="x", quality=quality)  # type: ignore[arg-type]
    assert param_of(caught.value) == "quality" and not fake.requests


def test_toapis_takes_nano_banana_2_extreme_ratios(switchyard: Start) -> None:
    fake = FakeToapis()
    sdk = switchyard({"TOAPIS_API_KEY": "test-key"}, {"toapis": fake})
    sdk.images.generate(model="nano-banana-2", prompt="a banner",
                        extra_body={"aspect_ratio": "8:1", "resolution": "2K"})
    sent = next(s for s in fake.seen if s.kind == "submit").json
    assert (sent["model"], sent["size"], sent["metadata"]) == \
        ("gemini-3.1-flash-image-preview", "8:1", {"resolution": "2K"})
