"""proxy.routing: ranking strategies and the capability filter, as pure tables."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from proxy.catalog import Capabilities, Provider, Route
from proxy.domain import Geometry, ImageRequest, InputImage, Kind, Policy
from proxy.routing import fit, strategies
from proxy.routing.health import Snapshot, State


def _route(name: str, prices: dict[str, str], latency: float = 1.0, **caps: object) -> Route:
    spec: dict[str, object] = {
        "tiers": tuple(prices), "aspect_ratios": ("1:1", "16:9"), "max_n": 4,
        "output_formats": ("png",), "backgrounds": ("auto",), **caps,
    }
    return Route(
        id=f"m/{name}", model="m",
        provider=Provider(name=name, protocol="simulated", base_url=f"http://{name}"),
        upstream_model=f"{name}-v1", price_per_image={t: Decimal(p) for t, p in prices.items()},
        capabilities=Capabilities(**spec),  # type: ignore[arg-type]
        typical_latency_s=latency,
    )


def _request(tier: str = "1K", ratio: str = "1:1", n: int = 1, source: str = "size",
             kind: Kind = "generate", output_format: str = "png",
             **fields: Any) -> ImageRequest:
    return ImageRequest(
        kind=kind, model="m", prompt="a lighthouse", n=n,
        geometry=Geometry(ratio, tier, None, source), output_format=output_format,
        response_format="b64_json", **fields)


# The demo's story: thrifty is cheap, steady is slow, swift is fast and dear.
THRIFTY = _route("thrifty", {"0.5K": "0.02", "1K": "0.03", "2K": "0.045"}, 1.0)
STEADY = _route("steady", {"1K": "0.05", "2K": "0.075", "4K": "0.12"}, 2.4)
SWIFT = _route("swift", {"1K": "0.08", "2K": "0.12", "4K": "0.16"}, 0.4)
# Cheap but very slow, against a little dearer and quick: `balanced` prefers the quick one.
SLUG = _route("slug", {"1K": "0.02"}, 10.0)
HARE = _route("hare", {"1K": "0.04"}, 1.0)
# Ties on price with different latencies, and a full tie.
TWIN_A = _route("twin-a", {"1K": "0.05"}, 3.0)
TWIN_B = _route("twin-b", {"1K": "0.05"}, 1.0)
TWIN_C = _route("twin-c", {"1K": "0.05"}, 3.0)
DEMO = (THRIFTY, STEADY, SWIFT)


def _ids(routes: list[Route]) -> list[str]:
    return [r.provider.name for r in routes]


@pytest.mark.parametrize(("strategy", "routes", "tier", "n", "expected"), [
    ("cheapest", DEMO, "1K", 1, ["thrifty", "steady", "swift"]),
    ("fastest", DEMO, "1K", 1, ["swift", "thrifty", "steady"]),
    ("balanced", DEMO, "1K", 1, ["thrifty", "steady", "swift"]),
    ("ordered", DEMO, "1K", 1, ["thrifty", "steady", "swift"]),
    ("ordered", (SWIFT, THRIFTY, STEADY), "1K", 1, ["swift", "thrifty", "steady"]),
    ("cheapest", (STEADY, SWIFT), "4K", 1, ["steady", "swift"]),
    ("cheapest", (SLUG, HARE), "1K", 1, ["slug", "hare"]),
    ("balanced", (SLUG, HARE), "1K", 1, ["hare", "slug"]),  # 0.07 against 0.045
    ("balanced", (SLUG, HARE), "1K", 4, ["hare", "slug"]),
    ("fastest", (SLUG, HARE), "1K", 1, ["hare", "slug"]),
    # Equal price: cheapest breaks the tie on latency; a full tie keeps catalog order.
    ("cheapest", (TWIN_A, TWIN_B, TWIN_C), "1K", 1, ["twin-b", "twin-a", "twin-c"]),
    ("cheapest", (TWIN_C, TWIN_A), "1K", 1, ["twin-c", "twin-a"]),
    ("balanced", (TWIN_C, TWIN_A), "1K", 1, ["twin-c", "twin-a"]),
    # Equal latency: fastest breaks the tie on price.
    ("fastest", (HARE, THRIFTY), "1K", 1, ["thrifty", "hare"]),
    ("fastest", (), "1K", 1, []),
])
def test_rank_on_priors(strategy: str, routes: tuple[Route, ...], tier: str, n: int,
                        expected: list[str]) -> None:
    """With no live evidence, expected latency is the catalog's typical_latency_s."""
    ranked = strategies.rank(routes, strategy, _request(tier=tier, n=n), _priors(routes))
    assert _ids(ranked) == expected


def _priors(routes: tuple[Route, ...] | list[Route]) -> dict[str, Snapshot]:
    return {r.id: _snap(expected_s=r.typical_latency_s) for r in routes}


def _snap(expected_s: float = 1.0, available: bool = True, stalled: bool = False,
          success: float = 1.0, p95_s: float | None = None) -> Snapshot:
    return Snapshot(state=State.CLOSED if available else State.OPEN, available=available,
                    expected_s=expected_s, p95_s=p95_s or 1.5 * expected_s,
                    success_ratio=success, in_flight=0, samples=10, stalled=stalled)


LIVE = {
    # thrifty's breaker is open, steady is slow today, swift is stalled.
    "open": {THRIFTY.id: _snap(available=False), STEADY.id: _snap(2.4), SWIFT.id: _snap(0.4)},
    "slow-swift": {THRIFTY.id: _snap(1.0), STEADY.id: _snap(2.4), SWIFT.id: _snap(9.0)},
    "stalled": {THRIFTY.id: _snap(1.0, stalled=True), STEADY.id: _snap(2.4),
                SWIFT.id: _snap(0.4)},
    "flaky": {THRIFTY.id: _snap(1.0, success=0.3), STEADY.id: _snap(2.4, success=1.0),
              SWIFT.id: _snap(0.4)},
    "all-down": {THRIFTY.id: _snap(available=False), STEADY.id: _snap(available=False),
                 SWIFT.id: _snap(0.4, available=False)},
}


@pytest.mark.parametrize(("strategy", "live", "expected"), [
    # An open breaker sends a route to the back, whatever its price.
    ("cheapest", "open", ["steady", "swift", "thrifty"]),
    ("fastest", "open", ["swift", "steady", "thrifty"]),
    ("ordered", "open", ["steady", "swift", "thrifty"]),
    # Live latency, not the catalog's prior, decides `fastest`.
    ("fastest", "slow-swift", ["thrifty", "steady", "swift"]),
    ("cheapest", "slow-swift", ["thrifty", "steady", "swift"]),
    # A stalled route follows the usable ones but precedes the unavailable.
    ("cheapest", "stalled", ["steady", "swift", "thrifty"]),
    # `balanced` divides by the success ratio: 0.035/0.3 loses to 0.062/1.0.
    ("balanced", "flaky", ["steady", "swift", "thrifty"]),
    ("cheapest", "flaky", ["thrifty", "steady", "swift"]),
    # Everything unavailable: still ranked, as last resorts, by the strategy.
    ("cheapest", "all-down", ["thrifty", "steady", "swift"]),
])
def test_rank_on_live_health(strategy: str, live: str, expected: list[str]) -> None:
    assert _ids(strategies.rank(DEMO, strategy, _request(), LIVE[live])) == expected


def test_rank_does_not_reorder_its_input() -> None:
    routes = [SWIFT, THRIFTY]
    strategies.rank(routes, "cheapest", _request(), _priors(routes))
    assert routes == [SWIFT, THRIFTY]


P95 = {THRIFTY.id: _snap(1.0, p95_s=12.0), STEADY.id: _snap(2.4, p95_s=4.0),
       SWIFT.id: _snap(0.4, p95_s=0.9)}


@pytest.mark.parametrize(("policy", "expected"), [
    (Policy(), ["thrifty", "steady", "swift"]),
    (Policy(only=frozenset({"swift", "steady"})), ["steady", "swift"]),
    (Policy(ignore=frozenset({"thrifty"})), ["steady", "swift"]),
    (Policy(max_price=Decimal("0.05")), ["thrifty", "steady"]),
    (Policy(max_price=Decimal("0.03")), ["thrifty"]),
    # max_latency_s keeps the routes whose recent p95 meets it.
    (Policy(max_latency_s=5.0), ["steady", "swift"]),
    (Policy(max_latency_s=5.0, max_price=Decimal("0.06")), ["steady"]),
    (Policy(only=frozenset({"nobody"})), "route.only"),
    (Policy(ignore=frozenset({"thrifty", "steady", "swift"})), "route.ignore"),
    (Policy(max_price=Decimal("0.01")), "route.max_price"),
    (Policy(max_latency_s=0.5), "route.max_latency_s"),
    # The first constraint to empty the list is named.
    (Policy(max_price=Decimal("0.03"), max_latency_s=5.0), "route.max_latency_s"),
])
def test_constrain(policy: Policy, expected: list[str] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(strategies.Unmet) as caught:
            strategies.constrain(DEMO, policy, _request(), P95)
        assert caught.value.param == expected
    else:
        assert _ids(strategies.constrain(DEMO, policy, _request(), P95)) == expected


@pytest.mark.parametrize(("first", "second", "expected"), [
    (Policy(strategy="fastest"), Policy(strategy="cheapest"), Policy(strategy="fastest")),
    (Policy(), Policy(strategy="cheapest", hedge=True), Policy(strategy="cheapest", hedge=True)),
    (Policy(hedge=False), Policy(hedge=True), Policy(hedge=False)),
    (Policy(max_price=Decimal(0)), Policy(max_price=Decimal(1)), Policy(max_price=Decimal(0))),
    (Policy(only=frozenset({"a"})), Policy(only=frozenset({"b"})), Policy(only=frozenset({"a"}))),
    (Policy(ignore=frozenset({"a"})), Policy(ignore=frozenset({"b"})),
     Policy(ignore=frozenset({"a", "b"}))),
])
def test_policy_layers(first: Policy, second: Policy, expected: Policy) -> None:
    assert first.over(second) == expected


def test_every_catalog_strategy_has_a_ranking() -> None:
    from proxy.catalog import STRATEGIES
    assert set(strategies.KEYS) == set(STRATEGIES)


@pytest.mark.parametrize(("route", "tier", "n", "expected"), [
    (THRIFTY, "1K", 1, Decimal("0.03")),
    (THRIFTY, "2K", 3, Decimal("0.135")),
    (SWIFT, "4K", 10, Decimal("1.60")),
])
def test_quote(route: Route, tier: str, n: int, expected: Decimal) -> None:
    assert route.quote(_request(tier=tier, n=n)) == expected


EDITOR = _route("editor", {"1K": "0.05", "2K": "0.07"}, edits=True, max_reference_images=2,
                output_formats=("png", "webp"), backgrounds=("auto", "transparent"))
PNG = InputImage(mime="image/png", data=b"\x89PNG")


@pytest.mark.parametrize(("route", "request_", "expected"), [
    (EDITOR, _request(), True),
    (EDITOR, _request(tier="4K"), False),
    (EDITOR, _request(ratio="9:16"), False),
    (EDITOR, _request(output_format="webp"), True),
    # Formats a route cannot produce natively are converted, never a reason to skip it.
    (THRIFTY, _request(output_format="webp"), True),
    (EDITOR, _request(background="transparent"), True),
    (THRIFTY, _request(background="transparent"), False),
    (EDITOR, _request(kind="edit", images=(PNG,)), True),
    (THRIFTY, _request(kind="edit", images=(PNG,)), False),
    (EDITOR, _request(kind="edit", images=(PNG, PNG, PNG)), False),
    (EDITOR, _request(images=(PNG,)), True),
    (THRIFTY, _request(images=(PNG,)), False),
    (EDITOR, _request(n=4), True),
    (EDITOR, _request(n=5), False),
])
def test_fits(route: Route, request_: ImageRequest, expected: bool) -> None:
    assert fit.fits(route, request_) is expected


# A route without 4K but with n up to 4, and one with 4K but a single image per call.
NO_4K = _route("no-4k", {"1K": "0.05"}, max_n=4)
ONE_AT_A_TIME = _route("single", {"1K": "0.05", "4K": "0.2"}, max_n=1)


@pytest.mark.parametrize(("routes", "request_", "param"), [
    ((THRIFTY, HARE), _request(tier="4K", source="size"), "size"),
    ((THRIFTY, HARE), _request(tier="4K", source="default"), "size"),
    ((THRIFTY,), _request(tier="4K", source="aspect_ratio"), "resolution"),
    ((THRIFTY,), _request(ratio="21:9", source="aspect_ratio"), "aspect_ratio"),
    ((THRIFTY,), _request(ratio="21:9", source="size"), "size"),
    ((THRIFTY,), _request(background="transparent"), "background"),
    ((THRIFTY,), _request(kind="edit", images=(PNG,)), "image"),
    ((EDITOR,), _request(kind="edit", images=(PNG, PNG, PNG)), "image"),
    ((EDITOR,), _request(images=(PNG, PNG, PNG)), "image_urls"),
    ((THRIFTY, SWIFT), _request(n=5), "n"),
    # Several checks fail: the first in CHECKS order is blamed.
    ((THRIFTY,), _request(tier="4K", n=9, output_format="webp", source="aspect_ratio"),
     "resolution"),
    # Each check passes on some route, none passes all: blame what the first route lacks.
    ((NO_4K, ONE_AT_A_TIME), _request(tier="4K", n=2, source="aspect_ratio"), "resolution"),
    ((ONE_AT_A_TIME, NO_4K), _request(tier="4K", n=2, source="aspect_ratio"), "n"),
    ((THRIFTY,), _request(), "model"),
    ((), _request(source="aspect_ratio"), "resolution"),
])
def test_unservable_param(routes: tuple[Route, ...], request_: ImageRequest, param: str) -> None:
    assert not any(fit.fits(r, request_) for r in routes) or param == "model"
    assert fit.unservable_param(routes, request_) == param


@pytest.mark.parametrize(("strategy", "route", "expected"), [
    # thrifty leads on price; swift could never lead `cheapest`, whatever its evidence.
    ("cheapest", SWIFT, False),
    ("cheapest", THRIFTY, True),
    # Under `fastest`, a slow-looking swift with a fast prior is worth a probe; steady is not.
    ("fastest", SWIFT, True),
    ("fastest", STEADY, False),
    # `ordered` ranks by the catalog alone: no evidence can move a route, so none is probed.
    ("ordered", STEADY, False),
])
def test_only_a_route_that_could_lead_is_worth_a_probe(strategy: str, route: Route,
                                                       expected: bool) -> None:
    snaps = {THRIFTY.id: _snap(1.0), STEADY.id: _snap(2.4), SWIFT.id: _snap(9.0)}
    assert strategies.could_lead(route, THRIFTY, strategy, _request(), snaps) is expected


@pytest.mark.parametrize(("strategy", "first_s", "spare_s", "pays"), [
    ("fastest", 1.0, 1.0, True),  # time is the objective: a hedge is always worth it
    ("cheapest", 10.0, 10.0, False),  # no time to save: a second image for nothing
    ("balanced", 10.0, 9.0, False),  # 1 s at $0.005/s is not worth swift's $0.08
    ("balanced", 40.0, 4.0, True),  # 36 s is worth $0.18
    ("cheapest", 40.0, 4.0, True),
])
def test_a_hedge_must_pay_for_itself(strategy: str, first_s: float, spare_s: float,
                                     pays: bool) -> None:
    # Issue 22.5: a hedge buys a second image (the loser is billed); it goes ahead only when
    # the time it is expected to save, at balanced's value of time, covers that price.
    assert strategies.hedge_pays(strategy, _request(), _snap(first_s), SWIFT,
                                 _snap(spare_s)) is pays
