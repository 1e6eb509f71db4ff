"""Planning a request: which routes may serve it, best first. Pure given the health snapshots:
fit, constrain, rank, maybe probe a stale route (router.py runs the plan)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.catalog import Model, Route
from proxy.domain import ImageRequest, Policy
from proxy.routing.fit import fits, unservable_param
from proxy.routing.health import Health, State
from proxy.routing.strategies import Unmet, constrain, could_lead, rank

# A deferred route is offered only to a request that can wait this many times its typical
# turnaround: a batch API's "usually minutes" still has a long tail.
DEFERRED_PATIENCE_FACTOR = 4.0


class NoRoute(Exception):
    """No route of the model can serve the request as asked; `param` says what to change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def effective_policy(model: Model, request: ImageRequest, key_policy: Policy) -> Policy:
    """The request's policy over the key's over the model's defaults."""
    return request.policy.over(key_policy).over(
        Policy(strategy=model.default_strategy, hedge=model.hedge))


def plan(model: Model, request: ImageRequest, policy: Policy, health: Health) -> Plan:
    """Routes that fit and meet the policy, best first; a route may go first as a probe: a
    half-open one (its attempt is bounded by its stall time, health.py), or a stale one, raced
    by the leader (`Plan.race`) so the client waits no longer for it. A patient request
    (a batch item) does not mind a slow probe: it is not raced."""
    candidates = [route for route in model.routes
                  if patient_enough(route, request) and fits(route, request)]
    if not candidates:
        param = unservable_param(model.routes, request)
        raise NoRoute(param, f"no route of model {model.name!r} can serve this request; "
                             f"change {param!r}")
    candidates = in_lane(candidates, request, policy.lane)
    if not candidates and policy.lane is None:
        raise NoRoute("route.lane", f"only discount lanes (answers in minutes) serve model "
                                    f"{model.name!r} now; send route.lane 'discount' to wait "
                                    f"for one")
    if not candidates:
        raise NoRoute("route.lane", f"no {policy.lane} lane of model {model.name!r} can serve "
                                    f"this request" + (" (a batch API's lane is for batch "
                                                       "items)" if policy.lane == "discount"
                                                       else ""))
    snapshots = health.snapshots(candidates, request.geometry.tier)
    try:
        kept = constrain(candidates, policy, request, snapshots)
    except Unmet as exc:
        raise NoRoute(exc.param, exc.message) from None
    strategy = policy.strategy or "cheapest"
    ranked = rank(kept, strategy, request, snapshots)
    worth = [r for r in ranked[1:] if could_lead(r, ranked[0], strategy, request, snapshots)]
    probe = health.probe([ranked[0], *worth], snapshots, request.geometry.tier) \
        if ranked else None
    if probe is None:
        return Plan(ranked)
    ranked.remove(probe)
    ranked.insert(0, probe)
    stale = snapshots[probe.id].state is not State.HALF_OPEN
    return Plan(ranked, race=stale and not request.patience_s)


@dataclass(frozen=True, slots=True)
class Plan:
    routes: list[Route]
    race: bool = False  # the first route is a stale probe: start the second at once too


def in_lane(routes: list[Route], request: ImageRequest, lane: str | None) -> list[Route]:
    """The routes of the lane asked for. Without one, a discount lane (Gemini's Flex: minutes
    for half the price) serves only a request that can wait as long as it takes, as a
    deferred route does: an interactive request is never slowed to minutes unasked."""
    if lane == "discount":
        return [r for r in routes if _discount(r)]
    if lane == "standard":
        return [r for r in routes if not _discount(r)]
    return [r for r in routes if not _discount(r) or _can_wait(r, request)]


def _discount(route: Route) -> bool:
    """A deferred host (a batch API) is a discount lane whatever its catalog entry says."""
    return route.provider.lane == "discount" or route.provider.deferred


def _can_wait(route: Route, request: ImageRequest) -> bool:
    return request.patience_s is not None and \
        request.patience_s >= route.typical_latency_s * DEFERRED_PATIENCE_FACTOR


def patient_enough(route: Route, request: ImageRequest) -> bool:
    """Interactive requests never take a deferred route (a batch API's hours); a batch item
    does when its remaining window covers the route's turnaround with room to spare."""
    return not route.provider.deferred or _can_wait(route, request)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request's routes, best first, and the policy that ranked them."""

    routes: tuple[Route, ...]
    policy: Policy
    race: bool = False  # the first two routes start together (Plan.race)
