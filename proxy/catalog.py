"""Load and validate routes/ at startup: the one place vendor facts come from.

A mistake in the catalog stops the server with a message naming the file and the field, rather
than surfacing as a strange error on some later request.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy import key_pools
from proxy.billing import pricing
from proxy.billing.pricing import TokenRates
from proxy.config import Secret
from proxy.domain import ASPECT_RATIOS, OUTPUT_FORMATS, TIERS, ImageRequest

STRATEGIES: tuple[str, ...] = ("cheapest", "fastest", "balanced", "ordered")
BACKGROUNDS: tuple[str, ...] = ("auto", "opaque", "transparent")
# Every `quality` the images API takes. `xhigh` and `max` came with gpt-image-2.5 (openai-python
# 3.63.0, types/image_generate_params.py): a route serves them only where its catalog entry
# lists them in capabilities.qualities; every route serves the rest (as it always has).
QUALITIES: tuple[str, ...] = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")
DEFAULT_QUALITIES: tuple[str, ...] = ("auto", "low", "medium", "high", "standard", "hd")
MAX_CACHE_TTL_S = 30 * 86400  # the longest a cached answer may be kept: thirty days


class CatalogError(ValueError):
    """The catalog is wrong; the message names the file and field."""


LANES: tuple[str, ...] = ("standard", "discount", "priority")


@dataclass(frozen=True, slots=True)
class Provider:
    """One upstream host: how to reach it and with which credential."""

    name: str
    protocol: str
    base_url: str
    key: Secret | None = None
    key_env: str | None = None
    timeout_s: float = 120.0
    max_in_flight: int = 16
    allowed_hosts: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # Options without which it cannot be called (Vertex's project); unset keeps it off.
    required_options: tuple[str, ...] = ()
    # Option name -> the environment variable it may be set from (for messages).
    options_env: Mapping[str, str] = field(default_factory=dict)
    # A deferred host (the Gemini Batch API) answers in minutes to hours at a discount: only
    # requests that can wait that long (batch items) are routed to it.
    deferred: bool = False
    # Its price lane: "standard"; "discount" (a batch API, Gemini's Flex tier: cheaper for
    # requests that can wait, routing/planning.py); "priority" (dearer, faster: a host like
    # any other, left to the strategies).
    lane: str = "standard"
    # Several keys (proxy/key_pools.py): the catalog splits it into one member per key.
    pool_keys: tuple[Secret, ...] = ()
    pool: str | None = None  # a member's provider: the name `route.only` and the like use

    @property
    def family(self) -> str:
        """The provider's own name, also for each member of its key pool."""
        return self.pool or self.name

    @property
    def credentialed(self) -> bool:
        """Its key is set, a command prints its token, or it needs none (the demo)."""
        return self.key is not None or bool(self.options.get("token_command")) \
            or not self.key_env

    def missing_options(self) -> tuple[str, ...]:
        return tuple(name for name in self.required_options if not self.options.get(name))

    @property
    def live(self) -> bool:
        """Configured: credentialed, and every required option is set."""
        return self.credentialed and not self.missing_options()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a route can serve; the router ranks only routes whose capabilities fit a request."""

    tiers: tuple[str, ...]
    aspect_ratios: tuple[str, ...]
    max_n: int = 1
    edits: bool = False
    max_reference_images: int = 0
    output_formats: tuple[str, ...] = ("png",)
    backgrounds: tuple[str, ...] = ("auto",)
    qualities: tuple[str, ...] = DEFAULT_QUALITIES
    # The host gives the same image for the same request and seed: a seeded request it
    # serves may be answered from the response cache by default (proxy/api/caching.py).
    seeds: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One way to serve a public model: a provider, its model id, prices and capabilities."""

    id: str
    model: str
    provider: Provider
    upstream_model: str
    price_per_image: Mapping[str, Decimal]
    capabilities: Capabilities
    typical_latency_s: float = 10.0
    options: Mapping[str, Any] = field(default_factory=dict)
    price_terms: str = "per image"  # how the host itself bills (tokens, credits, packs)
    token_rates: TokenRates | None = None  # per-token routes bill the reported usage
    # `price.quality`: an image of that quality costs this multiple of the tier price.
    quality_factors: Mapping[str, Decimal] = field(default_factory=dict)
    # What adapters derive from the route alone (auth headers, URLs, size choices), computed
    # on first use. Not copied by dataclasses.replace: a route with a fresh key starts empty.
    memo: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def unit_price(self, tier: str, quality: str = "auto") -> Decimal:
        """Dollars per image at a tier and quality, before the call."""
        return self.price_per_image[tier] * self.quality_factors.get(quality, 1)

    def quote(self, request: ImageRequest) -> Decimal:
        """The upstream price of this request here, before the call: its images, and on a
        route that bills input tokens and text output, what it is expected to send and get
        back besides, once per image (a host that makes one image a call is sent the prompt
        and references n times)."""
        images = self.unit_price(request.geometry.tier, request.quality) * request.n
        if self.token_rates is None:
            return images
        return images + self.token_rates.before(request.prompt, len(request.images)) * request.n


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    aliases: tuple[str, ...]
    owned_by: str
    created: int
    default_strategy: str
    routes: tuple[Route, ...]
    description: str = ""
    shutdown_date: str | None = None
    hedge: bool = False  # start a second attempt when the first passes its route's p95
    # Keep and reuse this model's answers for this long (seconds; 0: never) unless the
    # request or its key says otherwise; None: only seeded requests (proxy/api/caching.py).
    cache_ttl_s: int | None = None
    # tiers() and aspect_ratios(), worked out once: every request's size is checked by them.
    _shapes: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False,
                                                compare=False, repr=False)

    def tiers(self) -> tuple[str, ...]:
        found = self._shapes.get("tiers")
        if found is None:
            found = self._shapes["tiers"] = tuple(
                t for t in TIERS if any(t in r.capabilities.tiers for r in self.routes))
        return found

    def aspect_ratios(self) -> tuple[str, ...]:
        found = self._shapes.get("ratios")
        if found is None:
            seen = {a for r in self.routes for a in r.capabilities.aspect_ratios}
            found = self._shapes["ratios"] = tuple(a for a in ASPECT_RATIOS if a in seen)
        return found


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[Model, ...]
    providers: tuple[Provider, ...]
    demo: bool
    _index: Mapping[str, Model] = field(default_factory=dict, repr=False)

    def resolve(self, name: str) -> Model | None:
        """A public model by its name or one of its aliases."""
        return self._index.get(name)


def load(routes_dir: Path, env: Mapping[str, str], demo: bool | None,
         protocols: Collection[str]) -> Catalog:
    """The live catalog: real providers whose key is set, plus the demo when it is on.

    demo=None means "auto": the simulated demo runs only while no real provider is configured,
    so simulated routes never mix silently with real ones.
    """
    real = _live(_load_tree(routes_dir, env, protocols))
    use_demo = demo if demo is not None else not real
    demo_models = _load_tree(routes_dir / "demo", env, protocols, required=True) if use_demo \
        else []
    models = real + _live(demo_models)
    providers = {r.provider.name: r.provider for m in models for r in m.routes}
    return _index(models, list(providers.values()), use_demo)


def inventory(routes_dir: Path, env: Mapping[str, str],
              protocols: Collection[str]) -> list[Model]:
    """Every model with every route, live or not: what `switchyard routes list` shows."""
    return (_load_tree(routes_dir, env, protocols)
            + _load_tree(routes_dir / "demo", env, protocols))


def _live(models: list[Model]) -> list[Model]:
    """Models reduced to the routes whose provider is configured; models left empty go."""
    kept = [dataclasses.replace(m, routes=tuple(r for r in m.routes if r.provider.live))
            for m in models]
    return [m for m in kept if m.routes]


def _index(models: list[Model], providers: list[Provider], demo: bool) -> Catalog:
    index: dict[str, Model] = {}
    for model in models:
        for name in (model.name, *model.aliases):
            if name in index:
                raise CatalogError(f"model name or alias {name!r} is defined twice")
            index[name] = model
    return Catalog(tuple(models), tuple(providers), demo, index)


def _load_tree(root: Path, env: Mapping[str, str], protocols: Collection[str],
               required: bool = False) -> list[Model]:
    """All models of one tree (routes/ or routes/demo/); none if an optional tree is absent."""
    path = root / "providers.toml"
    if not path.exists() and not required:
        return []
    table = _read(path)
    providers = {name: _provider(name, spec, env, protocols, path)
                 for name, spec in table.items()}
    return [_model(_read(model_path), providers, model_path)
            for model_path in sorted((root / "models").glob("*.toml"), key=lambda p: p.stem)]


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: {exc}") from None


def _provider(name: str, spec: Any, env: Mapping[str, str], protocols: Collection[str],
              path: Path) -> Provider:
    where = f"{path} [{name}]"
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: expected a table")
    if "." in name or "/" in name:  # a key pool's members are `<name>.<label>`
        raise CatalogError(f"{where}: a provider's name holds no '.' or '/'")
    protocol = _require(spec, "protocol", str, where)
    if protocol not in protocols:
        raise CatalogError(f"{where}: unknown protocol {protocol!r} "
                           f"(known: {', '.join(sorted(protocols))})")
    try:
        names = key_pools.key_names(spec.get("key_env"), where)
    except key_pools.PoolError as exc:
        raise CatalogError(str(exc)) from None
    found = key_pools.keys(names, env)
    key_env = ", ".join(names) or None
    key = found[0] if found else None
    options_env = spec.get("options_env", {})
    if not isinstance(options_env, dict) or not all(isinstance(v, str)
                                                     for v in options_env.values()):
        raise CatalogError(f"{where}: options_env maps option names to environment variables")
    options = {**dict(spec.get("options", {})),
               **{name: env[var] for name, var in options_env.items() if env.get(var)}}
    return Provider(
        name=name, protocol=protocol, base_url=_require(spec, "base_url", str, where).rstrip("/"),
        key=key, key_env=key_env, timeout_s=_number(spec, "timeout_s", 120.0, where),
        max_in_flight=int(_number(spec, "max_in_flight", 16, where)),
        allowed_hosts=tuple(spec.get("allowed_hosts", ())), options=options,
        required_options=tuple(spec.get("required_options", ())), options_env=options_env,
        deferred=_flag(spec, "deferred", where),
        lane=_lane(spec, where),
        pool_keys=found if len(found) > 1 else (),
    )


def _lane(spec: dict[str, Any], where: str) -> str:
    """A deferred host is a discount lane unless it says otherwise."""
    lane = spec.get("lane", "discount" if spec.get("deferred") else "standard")
    if lane not in LANES:
        raise CatalogError(f"{where}: lane must be one of {', '.join(LANES)}, not {lane!r}")
    return str(lane)



def _model(spec: dict[str, Any], providers: Mapping[str, Provider], path: Path) -> Model:
    name = _require(spec, "name", str, str(path))
    strategy = spec.get("default_strategy", "cheapest")
    if strategy not in STRATEGIES:
        raise CatalogError(f"{path}: default_strategy {strategy!r} is not one of {STRATEGIES}")
    base_caps = spec.get("capabilities", {})
    routes: list[Route] = []
    for i, route in enumerate(spec.get("routes", [])):
        where = f"{path} routes[{i}]"
        provider = _require(route, "provider", str, where)
        if provider not in providers:
            raise CatalogError(f"{where}: provider {provider!r} is not in providers.toml")
        # Every route is checked, live or not, so a mistake shows before its key is set.
        routes.extend(_route(name, route, member, base_caps, where)
                      for member in key_pools.members(providers[provider]))
    created = spec.get("created", dt.date(2026, 1, 1))
    return Model(
        name=name, aliases=tuple(spec.get("aliases", ())),
        owned_by=str(spec.get("owned_by", "switchyard")),
        created=int(dt.datetime.combine(created, dt.time(), dt.UTC).timestamp()),
        default_strategy=strategy, routes=tuple(routes),
        description=str(spec.get("description", "")),
        shutdown_date=str(spec["shutdown_date"]) if spec.get("shutdown_date") else None,
        hedge=_flag(spec, "hedge", str(path)),
        cache_ttl_s=_cache_ttl(spec, str(path)),
    )


def _route(model: str, spec: dict[str, Any], provider: Provider, base_caps: Mapping[str, Any],
           where: str) -> Route:
    try:
        prices = pricing.per_image(spec.get("price"), where)
        factors = pricing.quality_factors(spec["price"], where)
        rates = pricing.token_rates(spec["price"], where)
    except pricing.PriceError as exc:
        raise CatalogError(str(exc)) from None
    caps = _capabilities({**base_caps, **spec.get("capabilities", {})}, tuple(prices), where)
    unserved = sorted(set(factors) - set(caps.qualities))
    if unserved:
        raise CatalogError(f"{where}: price.quality names {unserved}, which "
                           f"capabilities.qualities does not list")
    return Route(
        id=f"{model}/{provider.name}", model=model, provider=provider,
        upstream_model=_require(spec, "upstream_model", str, where),
        price_per_image=prices, price_terms=pricing.terms(spec["price"]),
        token_rates=rates, quality_factors=factors,
        capabilities=caps, typical_latency_s=_number(spec, "typical_latency_s", 10.0, where),
        options=dict(spec.get("options", {})),
    )


def _capabilities(spec: Mapping[str, Any], tiers: tuple[str, ...], where: str) -> Capabilities:
    caps = Capabilities(
        tiers=tuple(t for t in TIERS if t in tiers),
        aspect_ratios=tuple(spec.get("aspect_ratios", ("1:1",))),
        max_n=int(_number(spec, "max_n", 1, where)), edits=bool(spec.get("edits", False)),
        max_reference_images=int(_number(spec, "max_reference_images", 0, where)),
        output_formats=tuple(spec.get("output_formats", ("png",))),
        backgrounds=tuple(spec.get("backgrounds", ("auto",))),
        qualities=tuple(spec.get("qualities", DEFAULT_QUALITIES)),
        seeds=_flag(spec, "seeds", where),
    )
    for value, known, label in ((caps.aspect_ratios, ASPECT_RATIOS, "aspect_ratios"),
                                (caps.output_formats, OUTPUT_FORMATS, "output_formats"),
                                (caps.backgrounds, BACKGROUNDS, "backgrounds"),
                                (caps.qualities, QUALITIES, "qualities")):
        unknown = [v for v in value if v not in known]
        if unknown:
            raise CatalogError(f"{where}: unknown {label} {unknown}")
    if not 1 <= caps.max_n <= 10:
        raise CatalogError(f"{where}: max_n must be 1..10")
    return caps


def _flag(spec: Mapping[str, Any], key: str, where: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: {key!r} must be true or false")
    return value


def _cache_ttl(spec: Mapping[str, Any], where: str) -> int | None:
    value = spec.get("cache_ttl_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CACHE_TTL_S:
        raise CatalogError(f"{where}: 'cache_ttl_s' must be an integer from 0 to "
                           f"{MAX_CACHE_TTL_S} (seconds)")
    return value


def _require(spec: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = spec.get(key)
    if not isinstance(value, kind) or value == "":
        raise CatalogError(f"{where}: missing or invalid {key!r}")
    return value


def _number(spec: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise CatalogError(f"{where}: {key!r} must be a non-negative number")
    return float(value)
