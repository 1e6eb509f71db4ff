"""proxy.billing.pricing: every host's pricing terms to dollars per image per tier, exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from proxy.billing import pricing

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


@pytest.mark.parametrize(("rate", "tokens", "expected"), [
    (D(60) / 1_000_000, 2 * 1120, D("0.1344")),  # two 1K images as the host reported them
    (D(60) / 1_000_000, None, D("0.1344")),  # no usage reported: the per-image price
    (D(60) / 1_000_000, 0, D("0.1344")),
    (None, 5000, D("0.1344")),  # a per-image route ignores tokens
])
def test_actual_cost_follows_reported_tokens_on_per_token_routes(
        rate: Decimal | None, tokens: int | None, expected: Decimal) -> None:
    assert pricing.actual(D("0.0672"), 2, rate, tokens) == expected


def test_only_per_token_prices_have_a_token_rate() -> None:
    assert pricing.token_rate({"per_token": {"usd_per_million": 120, "tokens": {}}}) == \
        D("0.00012")
    assert pricing.token_rate({"per_image": {"1K": 1}}) is None
