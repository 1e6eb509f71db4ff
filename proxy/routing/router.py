"""Plan a request over the routes that can serve it, then run the plan with failover.

Retryable failures move on to the next route within the request's deadline; the client's own
errors (bad request, content blocked) and our own auth failures go straight back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx

from proxy import metrics
from proxy.catalog import Model, Route
from proxy.convert import conform
from proxy.domain import Attempt, ImageRequest, Served
from proxy.failures import Failure, UpstreamError
from proxy.providers import flows
from proxy.providers.base import Adapter
from proxy.providers.credentials import Credentials
from proxy.routing.fit import fits, unservable_param
from proxy.routing.strategies import rank


class NoRoute(Exception):
    """No route of the model can serve the request as asked; `param` says what to change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class RoutesFailed(Exception):
    """Every route tried failed, or one failed in a way no other route can fix."""

    def __init__(self, failure: Failure, attempts: tuple[Attempt, ...]) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.attempts = attempts


def plan(model: Model, request: ImageRequest) -> list[Route]:
    """Routes that fit, best first by the request's (or the model's default) strategy."""
    candidates = [route for route in model.routes if fits(route, request)]
    if not candidates:
        param = unservable_param(model.routes, request)
        raise NoRoute(param, f"no route of model {model.name!r} can serve this request; "
                             f"change {param!r}")
    return rank(candidates, request.strategy or model.default_strategy, request)


class Router:
    """Runs plans; holds the adapters and pooled clients built in the app's lifespan."""

    def __init__(self, adapters: Mapping[str, Adapter], clients: Mapping[str, httpx.AsyncClient],
                 timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 credentials: Credentials | None = None) -> None:
        self._adapters = adapters
        self._clients = clients
        self._timeout_s = timeout_s
        self._clock = clock
        self._credentials = credentials

    async def serve(self, model: Model, request: ImageRequest) -> Served:
        routes = plan(model, request)
        deadline = self._clock() + self._timeout_s
        attempts: list[Attempt] = []
        for route in routes:
            started = self._clock()
            try:
                result = await flows.generate(self._adapters[route.provider.protocol], route,
                                              request, self._clients[route.provider.name],
                                              deadline, self._credentials)
            except UpstreamError as exc:
                attempts.append(self._record(route, exc.failure, started))
                if not exc.failure.retryable or self._clock() >= deadline:
                    raise RoutesFailed(exc.failure, tuple(attempts)) from None
                last = exc.failure
                continue
            attempts.append(self._record(route, None, started))
            native = result.images[0].mime
            result, converted = await conform(result, request)
            cost = route.price_per_image[request.geometry.tier] * len(result.images)
            return Served(result, route.id, route.provider.name, route.upstream_model, cost,
                          tuple(attempts), native if converted else None)
        raise RoutesFailed(last, tuple(attempts))

    def _record(self, route: Route, failure: Failure | None, started: float) -> Attempt:
        seconds = self._clock() - started
        outcome = failure.kind.value if failure else "success"
        metrics.UPSTREAM_ATTEMPTS.labels(route.provider.name, outcome).inc()
        metrics.UPSTREAM_SECONDS.labels(route.provider.name, outcome).observe(seconds)
        return Attempt(route.id, route.provider.name, failure.kind.value if failure else None,
                       seconds)
