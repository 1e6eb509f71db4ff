"""proxy.billing.pricing: every host's pricing terms to dollars per image per tier, exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from proxy.billing import pricing
from proxy.domain import Usage

D = Decimal


@pytest.mark.parametrize(("price", "expected", "terms"), [
    ({"per_image": {"1K": 0.067, "2K": 0.101}}, {"1K": D("0.067"), "2K": D("0.101")},
     "per image"),
    # Gemini: output image tokens x $/M (747 / 1120 / 1680 / 2520 tokens at $60 per million).
    ({"per_token": {"usd_per_million": 60, "tokens": {"0.5K": 747, "1K": 1120, "2K": 1680,
                                                      "4K": 2520}}},
     {"0.5K": D("0.04482"), "1K": D("0.0672"), "2K": D("0.1008"), "4K": D("0.1512")},
     "$60/M output tokens"),
    ({"per_token": {"usd_per_million": 30, "tokens": {"1K": 1290}}}, {"1K": D("0.0387")},
     "$30/M output tokens"),
    # Credits bought in packs: NewportAI's $60 for 8,000 credits, 10 credits an image.
    ({"credits": {"per_image": {"1K": 10, "2K": 15}, "pack_usd": 60, "pack_credits": 8000}},
     {"1K": D("0.075"), "2K": D("0.1125")}, "credits: $60 per 8,000"),
    # Kie: credits at a fixed dollar price each.
    ({"credits": {"per_image": {"1K": 12}, "usd_per_credit": 0.005}}, {"1K": D("0.060")},
     "credits: $0.005 each"),
    # BytePlus: $30.10 for 7M tokens; Seedream bills w*h/256 tokens (1024x1024 = 4096).
    ({"token_pack": {"pack_usd": 30.10, "pack_tokens": 7_000_000, "tokens": {"1K": 4096}}},
     {"1K": D("30.10") / D(7_000_000) * 4096}, "token pack: $30.1 per 7,000,000 tokens"),
])
def test_terms_become_dollars_per_image(price: dict[str, Any], expected: dict[str, Decimal],
                                        terms: str) -> None:
    assert pricing.per_image(price, "x") == expected
    assert pricing.terms(price) == terms


def test_byteplus_pack_is_about_two_cents_a_megapixel_image() -> None:
    got = pricing.per_image({"token_pack": {"pack_usd": 30.10, "pack_tokens": 7_000_000,
                                            "tokens": {"1K": 4096}}}, "x")["1K"]
    assert D("0.0176") < got < D("0.0177")


@pytest.mark.parametrize(("price", "needle"), [
    (None, "exactly one of"),
    ({}, "exactly one of"),
    ({"per_image": {"1K": 1}, "per_token": {}}, "exactly one of"),
    ({"per_image": {}}, "price.per_image: needs a value"),
    ({"per_image": {"8K": 1}}, "unknown tier '8K'"),
    ({"per_image": {"1K": -1}}, "price.per_image.1K: must be a non-negative number"),
    ({"per_image": {"1K": "cheap"}}, "price.per_image.1K"),
    ({"per_image": {"1K": True}}, "price.per_image.1K"),
    ({"per_token": {"tokens": {"1K": 10}}}, "price.per_token.usd_per_million"),
    ({"per_token": 5}, "price.per_token: expected a table"),
    ({"credits": {"per_image": {"1K": 1}, "pack_usd": 10}}, "pack_credits"),
    ({"credits": {"per_image": {"1K": 1}, "pack_usd": 10, "pack_credits": 0}},
     "holds more than nothing"),
    ({"token_pack": {"pack_usd": 1, "pack_tokens": 10}}, "price.token_pack.tokens"),
])
def test_mistakes_name_the_field(price: Any, needle: str) -> None:
    with pytest.raises(pricing.PriceError) as caught:
        pricing.per_image(price, "models/x.toml routes[0]")
    assert "models/x.toml routes[0]" in str(caught.value) and needle in str(caught.value)


NB2 = pricing.TokenRates(D(60) / 1_000_000)
# Nano Banana Pro as Google bills it: input $2/M (560 per input image), text output $12/M.
PRO = pricing.TokenRates(D(120) / 1_000_000, D(2) / 1_000_000, D(12) / 1_000_000, 560)


@pytest.mark.parametrize(("rates", "usage", "expected"), [
    (NB2, Usage(output_tokens=2240, output_image_tokens=2 * 1120), D("0.1344")),  # as reported
    (NB2, None, D("0.1344")),  # no usage reported: the per-image price
    (NB2, Usage(input_tokens=9, output_tokens=9), D("0.1344")),  # no image tokens said
    (None, Usage(output_image_tokens=5000), D("0.1344")),  # a per-image route ignores tokens
    # A Pro edit with 8 references: 4480 image and 8 text input tokens, 5 words of text out.
    (PRO, Usage(input_tokens=4488, output_tokens=2245, input_image_tokens=4480,
                output_image_tokens=2240), D("0.2688") + D("0.008976") + D("0.00006")),
])
def test_actual_cost_follows_reported_tokens_on_per_token_routes(
        rates: pricing.TokenRates | None, usage: Usage | None, expected: Decimal) -> None:
    assert pricing.actual(D("0.0672"), 2, rates, usage) == expected


def test_only_per_token_prices_have_token_rates() -> None:
    assert pricing.token_rates({"per_token": {"usd_per_million": 120, "tokens": {}}}) == \
        pricing.TokenRates(D("0.00012"))
    assert pricing.token_rates({"per_token": {
        "usd_per_million": 120, "input_usd_per_million": 2, "text_usd_per_million": 12,
        "input_tokens_per_image": 560, "tokens": {}}}) == PRO
    assert pricing.token_rates({"per_image": {"1K": 1}}) is None
    with pytest.raises(pricing.PriceError, match="input_usd_per_million"):
        pricing.token_rates({"per_token": {"usd_per_million": 1, "input_usd_per_million": -1}})


def test_the_input_a_call_is_quoted_covers_its_references_and_prompt() -> None:
    assert PRO.before("x" * 30, 8) == D(2) / 1_000_000 * (8 * 560 + 10)
    assert NB2.before("x" * 30, 8) == 0
