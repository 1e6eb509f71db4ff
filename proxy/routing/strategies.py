"""Ranking strategies: pure functions from candidate routes and a request to an order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from proxy.catalog import Route
from proxy.domain import ImageRequest

# What a second of waiting is worth to the `balanced` strategy, in USD per image.
VALUE_OF_TIME_USD_PER_S = Decimal("0.005")


def quote(route: Route, request: ImageRequest) -> Decimal:
    """The upstream price of this request on this route, before the call."""
    return route.price_per_image[request.geometry.tier] * request.n


def _latency(route: Route) -> Decimal:
    return Decimal(str(route.typical_latency_s))


def _cheapest(route: Route, request: ImageRequest) -> tuple[Decimal, ...]:
    return (quote(route, request), _latency(route))


def _fastest(route: Route, request: ImageRequest) -> tuple[Decimal, ...]:
    return (_latency(route), quote(route, request))


def _balanced(route: Route, request: ImageRequest) -> tuple[Decimal, ...]:
    return (quote(route, request) + VALUE_OF_TIME_USD_PER_S * request.n * _latency(route),)


def _ordered(route: Route, request: ImageRequest) -> tuple[Decimal, ...]:
    return ()


KEYS: dict[str, Callable[[Route, ImageRequest], tuple[Decimal, ...]]] = {
    "cheapest": _cheapest,
    "fastest": _fastest,
    "balanced": _balanced,
    "ordered": _ordered,
}


def rank(routes: Sequence[Route], strategy: str, request: ImageRequest) -> list[Route]:
    """Routes best-first by the strategy; ties keep the catalog's order (sorted is stable)."""
    key = KEYS[strategy]
    return sorted(routes, key=lambda route: key(route, request))
