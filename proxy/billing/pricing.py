"""Upstream prices in each host's own terms, converted to US dollars per image per tier.

Hosts bill per image, per output token, in credits bought in packs, or from token packs. The
catalog states a route's price the way its host publishes it; routing and billing only ever
see dollars per image at each resolution tier. Pure functions: no I/O, exact decimals.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.domain import TIERS, Usage

MILLION = Decimal(1_000_000)


class PriceError(ValueError):
    """A price table that cannot be read; the message names the field."""


def per_image(price: Any, where: str) -> dict[str, Decimal]:
    """Dollars per image by tier from a route's `price` table, which holds exactly one of:

    - `per_image = { "1K" = 0.067, ... }`
    - `per_token = { usd_per_million = 60, tokens = { "1K" = 1120, ... } }` (output image
      tokens; and optionally input_usd_per_million, text_usd_per_million and
      input_tokens_per_image: see TokenRates)
    - `credits = { per_image = { "1K" = 18, ... }, pack_usd = 60, pack_credits = 8000 }`
      (or `usd_per_credit = 0.0075` in place of the pack)
    - `token_pack = { pack_usd = 30.10, pack_tokens = 7000000, tokens = { "2K" = 16384 } }`
    """
    if not isinstance(price, Mapping):
        price = {}
    kinds = [k for k in ("per_image", "per_token", "credits", "token_pack") if k in price]
    if len(kinds) != 1:
        raise PriceError(f"{where}: price needs exactly one of price.per_image, "
                         f"price.per_token, price.credits, price.token_pack")
    kind = kinds[0]
    spec = price[kind]
    at = f"{where} price.{kind}"
    if kind == "per_image":
        return _tiers(spec, at, lambda v, w: _amount(v, w))
    if not isinstance(spec, Mapping):
        raise PriceError(f"{at}: expected a table")
    if kind == "per_token":
        rate = _amount(spec.get("usd_per_million"), f"{at}.usd_per_million") / MILLION
        return _tiers(spec.get("tokens"), f"{at}.tokens", lambda v, w: _amount(v, w) * rate)
    if kind == "credits":
        usd = _unit_price(spec, "usd_per_credit", "pack_credits", at)
        return _tiers(spec.get("per_image"), f"{at}.per_image", lambda v, w: _amount(v, w) * usd)
    usd = _unit_price(spec, "usd_per_token", "pack_tokens", at)
    return _tiers(spec.get("tokens"), f"{at}.tokens", lambda v, w: _amount(v, w) * usd)


@dataclass(frozen=True, slots=True)
class TokenRates:
    """Dollars per token on a per-token route, whose bill follows the usage the host reports:
    output image tokens (`usd_per_million`), and, where the host bills them (Google's
    formula: prompt tokens x input price + text output, thoughts included, x text price +
    image tokens x image price), input tokens (`input_usd_per_million`) and text output
    (`text_usd_per_million`). For the quote before the call: `reference_tokens`
    (`input_tokens_per_image`), what one input image costs in input tokens, and
    `text_tokens` (`text_tokens_per_call`), the text a call is expected to write at most
    (a model that thinks before it draws is billed its thoughts as text)."""

    image: Decimal
    input: Decimal = Decimal(0)
    text: Decimal = Decimal(0)
    reference_tokens: int = 0
    text_tokens: int = 0

    def cost(self, usage: Usage) -> Decimal:
        text = max(usage.output_tokens - usage.output_image_tokens, 0)
        return (self.image * usage.output_image_tokens + self.input * usage.input_tokens
                + self.text * text)

    def before(self, prompt: str, references: int) -> Decimal:
        """What a call is expected to cost besides its image: its reference images and its
        prompt (one token for every three characters: more than any tokenizer counts) as
        input, and its text."""
        tokens = references * self.reference_tokens + -(-len(prompt) // 3)
        return self.input * tokens + self.text * self.text_tokens


def token_rates(price: Mapping[str, Any], where: str = "route") -> TokenRates | None:
    """A per-token route's rates; None for every other kind of price."""
    spec = price.get("per_token")
    if not isinstance(spec, Mapping):
        return None
    at = f"{where} price.per_token"

    def rate(name: str) -> Decimal:
        return _amount(spec.get(name, 0), f"{at}.{name}") / MILLION

    def count(name: str) -> int:
        return int(_amount(spec.get(name, 0), f"{at}.{name}"))

    return TokenRates(rate("usd_per_million"), rate("input_usd_per_million"),
                      rate("text_usd_per_million"), count("input_tokens_per_image"),
                      count("text_tokens_per_call"))


def actual(per_image_usd: Decimal, images: int, rates: TokenRates | None,
           usage: Usage | None) -> Decimal:
    """What a delivered result costs: its reported tokens at the rates of a per-token route
    whose host reported its image tokens, else the per-image price x images made (and the
    input tokens reported, on a route that bills them: only the output went unsplit)."""
    if rates is not None and usage is not None:
        if usage.output_image_tokens:
            return rates.cost(usage)
        return per_image_usd * images + rates.input * usage.input_tokens
    return per_image_usd * images


def quality_factors(price: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    """`price.quality = { low = 0.25, max = 4 }`: what an image of each named quality costs,
    as a multiple of the tier prices (which are the price of every quality not named). Hosts
    whose bill grows with `quality` (OpenAI's output tokens) quote it right before the call."""
    spec = price.get("quality", {})
    if not isinstance(spec, Mapping):
        raise PriceError(f"{where} price.quality: expected a table of quality = factor")
    factors = {str(name): _amount(value, f"{where} price.quality.{name}")
               for name, value in spec.items()}
    if any(factor == 0 for factor in factors.values()):
        raise PriceError(f"{where} price.quality: a factor must be above zero")
    return factors


def terms(price: Mapping[str, Any]) -> str:
    """The host's own pricing terms in a few words, for `switchyard routes list`."""
    if "per_token" in price:
        spec = price["per_token"]
        return f"${spec.get('usd_per_million')}/M output tokens"
    if "credits" in price:
        spec = price["credits"]
        if "pack_usd" in spec:
            return f"credits: ${spec['pack_usd']} per {spec['pack_credits']:,}"
        return f"credits: ${spec.get('usd_per_credit')} each"
    if "token_pack" in price:
        spec = price["token_pack"]
        return f"token pack: ${spec.get('pack_usd')} per {spec.get('pack_tokens'):,} tokens"
    return "per image"


def _unit_price(spec: Mapping[str, Any], direct: str, count: str, at: str) -> Decimal:
    """Dollars per unit: given directly, or a pack's price over its size."""
    if direct in spec:
        return _amount(spec[direct], f"{at}.{direct}")
    pack = _amount(spec.get("pack_usd"), f"{at}.pack_usd")
    size = _amount(spec.get(count), f"{at}.{count}")
    if size == 0:
        raise PriceError(f"{at}.{count}: a pack holds more than nothing")
    return pack / size


def _tiers(spec: Any, at: str, convert: Any) -> dict[str, Decimal]:
    if not isinstance(spec, Mapping) or not spec:
        raise PriceError(f"{at}: needs a value for at least one tier")
    unknown = [t for t in spec if t not in TIERS]
    if unknown:
        raise PriceError(f"{at}: unknown tier {unknown[0]!r} (known: {', '.join(TIERS)})")
    return {t: convert(spec[t], f"{at}.{t}") for t in TIERS if t in spec}


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceError(f"{where}: must be a non-negative number")
    amount = Decimal(str(value))
    if amount < 0:
        raise PriceError(f"{where}: must be a non-negative number")
    return amount


@dataclass(frozen=True, slots=True)
class Plan:
    """What tenants on this plan pay: a list price per public model and tier where it has one,
    else the upstream's cost times (1 + markup). `markup = 0` is pass-through."""

    name: str
    markup: Decimal = Decimal(0)
    list_prices: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    # An image answered from the response cache (or shared with an identical request in
    # flight) costs this multiple of the plan's price for it: 1 bills it like the call it
    # saved, 0 gives it away. Its upstream cost is $0 either way.
    cache_hit_factor: Decimal = Decimal(1)

    def per_image(self, model: str, tier: str, upstream_per_image: Decimal) -> Decimal:
        listed = self.list_prices.get(model, {}).get(tier)
        return listed if listed is not None else upstream_per_image * (1 + self.markup)

    def cached(self, model: str, tier: str, made_for: Decimal, images: int) -> Decimal:
        """What `images` images from the cache are billed, made upstream for `made_for`."""
        if not images:
            return Decimal(0)
        return self.per_image(model, tier, made_for / images) * images * self.cache_hit_factor


DEFAULT_PLAN = Plan("default")


def load_plans(path: Path) -> dict[str, Plan]:
    """routes/plans.toml: `[name]` tables with `markup` and/or `prices.<model> = {tier = $}`.
    A `default` plan (pass-through unless the file says otherwise) always exists."""
    plans = {"default": DEFAULT_PLAN}
    if not path.exists():
        return plans
    for name, spec in tomllib.loads(path.read_text()).items():
        where = f"{path} [{name}]"
        if not isinstance(spec, Mapping):
            raise PriceError(f"{where}: expected a table")
        unknown = set(spec) - {"markup", "prices", "description", "cache_hit_factor"}
        if unknown:
            raise PriceError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        prices = spec.get("prices", {})
        if not isinstance(prices, Mapping):
            raise PriceError(f"{where}: prices maps model names to tables of tier prices")
        plans[name] = Plan(name, _amount(spec.get("markup", 0), f"{where} markup"),
                           {model: _tiers(tiers, f"{where} prices.{model}", _amount)
                            for model, tiers in prices.items()},
                           _amount(spec.get("cache_hit_factor", 1),
                                   f"{where} cache_hit_factor"))
    return plans
