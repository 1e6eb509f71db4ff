"""Ranking: pure functions from candidate routes, a policy and health snapshots to an order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from itertools import groupby

from proxy.catalog import Route
from proxy.domain import ImageRequest, Policy
from proxy.routing.health import Snapshot

# What a second of waiting is worth to the `balanced` strategy, in USD per image.
VALUE_OF_TIME_USD_PER_S = 0.005
# `balanced` divides by the success probability; this floor keeps a bad route finite.
MIN_SUCCESS = 0.05


class Unmet(Exception):
    """A routing constraint that no route able to serve the request meets."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def constrain(routes: Sequence[Route], policy: Policy, request: ImageRequest,
              snapshots: Mapping[str, Snapshot]) -> list[Route]:
    """The routes that meet the policy's constraints, or Unmet naming the one that empties
    the list (only, ignore, max_price, max_latency_s: checked in that order)."""
    tier = request.geometry.tier
    checks: tuple[tuple[str, bool, Callable[[Route], bool], str], ...] = (
        ("route.only", bool(policy.only), lambda r: r.provider.family in policy.only,
         f"no route of this model is on a provider in 'only' ({', '.join(sorted(policy.only))})"),
        ("route.ignore", bool(policy.ignore),
         lambda r: r.provider.family not in policy.ignore,
         "every route of this model is on an ignored provider"),
        ("route.max_price", policy.max_price is not None,  # all it costs, per image
         lambda r: r.quote(request) <= (policy.max_price or 0) * request.n,
         f"no route serves {tier} at or below max_price {policy.max_price} USD per image"),
        ("route.max_latency_s", policy.max_latency_s is not None,
         lambda r: snapshots[r.id].p95_s <= (policy.max_latency_s or 0),
         f"no route's recent p95 latency meets max_latency_s {policy.max_latency_s}"),
    )
    kept = list(routes)
    for param, active, keep, message in checks:
        if active:
            kept = [r for r in kept if keep(r)]
            if not kept:
                raise Unmet(param, message)
    return kept


def hedge_pays(strategy: str, request: ImageRequest, first: Snapshot, spare_route: Route,
               spare: Snapshot) -> bool:
    """Whether a hedge is worth the second image it buys (whichever attempt loses is billed
    by its host): under `fastest` time is the objective, so always; under the others, when
    the time it is expected to save, at `balanced`'s value of time, covers the spare's
    price. A call past its 97th percentile is slow for a reason: it is expected to take
    about its typical latency more, against the spare's typical latency."""
    if strategy == "fastest":
        return True
    saving_s = max(0.0, first.expected_s - spare.expected_s)
    return VALUE_OF_TIME_USD_PER_S * request.n * saving_s >= float(spare_route.quote(request))


def _cheapest(route: Route, request: ImageRequest, snap: Snapshot) -> tuple[float, ...]:
    return (float(route.quote(request)), snap.expected_s)


def _fastest(route: Route, request: ImageRequest, snap: Snapshot) -> tuple[float, ...]:
    return (snap.expected_s, float(route.quote(request)))


def _balanced(route: Route, request: ImageRequest, snap: Snapshot) -> tuple[float, ...]:
    cost = float(route.quote(request)) + VALUE_OF_TIME_USD_PER_S * request.n * snap.expected_s
    return (cost / max(snap.success_ratio, MIN_SUCCESS),)


def _ordered(route: Route, request: ImageRequest, snap: Snapshot) -> tuple[float, ...]:
    return ()


KEYS: dict[str, Callable[[Route, ImageRequest, Snapshot], tuple[float, ...]]] = {
    "cheapest": _cheapest,
    "fastest": _fastest,
    "balanced": _balanced,
    "ordered": _ordered,
}


def rank(routes: Sequence[Route], strategy: str, request: ImageRequest,
         snapshots: Mapping[str, Snapshot]) -> list[Route]:
    """Routes best-first by the strategy. Routes that cannot take a request now (breaker
    open, cooling down after a 429, or stalled) follow all others, as a last resort; ties
    keep the catalog's order (sorted is stable)."""
    key = KEYS[strategy]

    def order(route: Route) -> tuple[bool, bool, tuple[float, ...]]:
        snap = snapshots[route.id]
        return not snap.available, snap.stalled, key(route, request, snap)

    return least_loaded_keys(sorted(routes, key=order), snapshots)


def least_loaded_keys(ranked: list[Route], snapshots: Mapping[str, Snapshot]) -> list[Route]:
    """Keys of one provider's pool (proxy/key_pools.py) ranked side by side take turns, the
    one with the fewest attempts in flight first: each key is its own rate limit, so load
    spreads over them instead of filling one before the next (an unusable key stays last)."""
    def load(route: Route) -> tuple[bool, bool, int]:
        snap = snapshots[route.id]
        return not snap.available, snap.stalled, snap.in_flight

    # A route outside any pool is a run of its own (its id is unique).
    runs = groupby(ranked, key=lambda route: route.provider.pool or route.id)
    return [route for _, run in runs for route in sorted(run, key=load)]


def could_lead(route: Route, leader: Route, strategy: str, request: ImageRequest,
               snapshots: Mapping[str, Snapshot]) -> bool:
    """Whether `route` would rank level with `leader` or ahead of it if its evidence were back
    to the catalog's prior: only then can a probe of it change where traffic goes. Under
    `ordered` no evidence decides the order (the catalog does), so no route is worth one."""
    key = KEYS[strategy]
    if not key(leader, request, snapshots[leader.id]):
        return False  # no figure decides the order: a probe cannot change it
    fresh = replace(snapshots[route.id], expected_s=route.typical_latency_s, success_ratio=1.0)
    return key(route, request, fresh) <= key(leader, request, snapshots[leader.id])
