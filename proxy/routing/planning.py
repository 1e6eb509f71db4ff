"""Planning a request: which routes may serve it, best first. Pure given the health snapshots:
fit, constrain, rank, maybe probe a stale route (router.py runs the plan)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.catalog import Model, Route
from proxy.domain import ImageRequest, Policy
from proxy.routing.fit import fits, unservable_param
from proxy.routing.health import Health
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


def plan(model: Model, request: ImageRequest, policy: Policy, health: Health) -> list[Route]:
    """Routes that fit and meet the policy, best first; a stale route may go first as a probe."""
    candidates = [route for route in model.routes
                  if patient_enough(route, request) and fits(route, request)]
    if not candidates:
        param = unservable_param(model.routes, request)
        raise NoRoute(param, f"no route of model {model.name!r} can serve this request; "
                             f"change {param!r}")
    snapshots = health.snapshots(candidates, request.geometry.tier)
    try:
        kept = constrain(candidates, policy, request, snapshots)
    except Unmet as exc:
        raise NoRoute(exc.param, exc.message) from None
    strategy = policy.strategy or "cheapest"
    ranked = rank(kept, strategy, request, snapshots)
    worth = [r for r in ranked[1:] if could_lead(r, ranked[0], strategy, request, snapshots)]
    probe = health.probe([ranked[0], *worth], snapshots) if ranked else None
    if probe is not None:
        ranked.remove(probe)
        ranked.insert(0, probe)
    return ranked


def patient_enough(route: Route, request: ImageRequest) -> bool:
    """Interactive requests never take a deferred route (a batch API's hours); a batch item
    does when its remaining window covers the route's turnaround with room to spare."""
    if not route.provider.deferred:
        return True
    return request.patience_s is not None and \
        request.patience_s >= route.typical_latency_s * DEFERRED_PATIENCE_FACTOR


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request's routes, best first, and the policy that ranked them."""

    routes: tuple[Route, ...]
    policy: Policy
