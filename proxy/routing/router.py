"""Run a request's plan (planning.py) with failover.

Execution is one loop (run.py): start the best route; on a retryable failure start the next;
with hedging on, start one more when the first passes its route's p95; the first image wins.
The client's own errors (bad request, content blocked) go straight back; a host that refuses
Switchyard's credential is a failover (routing/health.py rests that route).
The Router holds what outlives a request: adapters, pooled clients, health and slots.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

import httpx

from proxy import tracing, verify
from proxy.billing import pricing
from proxy.catalog import Model, Route
from proxy.convert import conform
from proxy.domain import ImageRequest, ImageResult, Policy, Served
from proxy.providers import flows
from proxy.providers.base import Adapter
from proxy.providers.callbacks import Callbacks
from proxy.providers.grouping import Groups
from proxy.routing.health import Health
from proxy.routing.planning import Prepared, effective_policy, plan
from proxy.routing.run import RoutesFailed, Run
from proxy.routing.slots import Slot, Slots
from proxy.upstream.credentials import Credentials

if TYPE_CHECKING:
    from proxy.state import HostSlots

__all__ = ["Router", "RoutesFailed"]


class Router:
    """Runs plans; holds the adapters, pooled clients, health and slots built in the lifespan."""

    def __init__(self, adapters: Mapping[str, Adapter], clients: Mapping[str, httpx.AsyncClient],
                 timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 credentials: Credentials | None = None, health: Health | None = None,
                 slots: HostSlots | None = None, callbacks: Callbacks | None = None,
                 groups: Groups | None = None,
                 max_pixels: int = verify.DEFAULT_MAX_PIXELS) -> None:
        self._adapters = adapters
        self._max_pixels = max_pixels
        self._clients = clients
        self._timeout_s = timeout_s
        self._clock = clock
        self._credentials = credentials
        self.health = health or Health((), clock=clock)
        self._slots: HostSlots = slots or Slots(())
        self.callbacks = callbacks or Callbacks(None)
        self.groups = groups or Groups(flows.run_steps)

    @property
    def waiting(self) -> int:
        """Patient requests (batch items) waiting for a slot: the scheduler claims no more
        while many are, so queued items wait in the database, not in memory."""
        return self._slots.waiting

    @property
    def capacity(self) -> int:
        """Attempts that may be in flight, all hosts together (the fleet's in fleet mode)."""
        return self._slots.capacity

    async def free(self) -> int:
        """Slots free now, all hosts together (fleet-wide in fleet mode)."""
        return await self._slots.free()

    @property
    def held(self) -> int:
        """Slots held now, all hosts: attempts in flight."""
        return self._slots.held

    async def serve(self, model: Model, request: ImageRequest,
                    key_policy: Policy | None = None) -> Served:
        return await self.run(self.prepare(model, request, key_policy), request)

    def prepare(self, model: Model, request: ImageRequest,
                key_policy: Policy | None = None, first: Collection[str] = ()) -> Prepared:
        """The plan for a request, before anything is sent: billing quotes from its routes.
        Routes named in `first` (they hold upstream work an earlier run of this request
        started) come first, in the plan's order."""
        policy = effective_policy(model, request, key_policy or Policy())
        planned = plan(model, request, policy, self.health)
        routes = tuple(planned.routes)
        if first:
            routes = tuple(sorted(routes, key=lambda route: route.id not in first))
            return Prepared(routes, policy)
        return Prepared(routes, policy, planned.race)

    async def run(self, prepared: Prepared, request: ImageRequest,
                  submits: flows.Submits | None = None, slot: Slot | None = None) -> Served:
        """Run the plan to the first route that delivers. With `submits` (a queued request),
        every submit is written down first, and one an earlier run made is resumed. `slot`
        is one already held (taken with the admission): the run uses it for its host or
        releases it."""
        policy = prepared.policy
        run = Run(self, request, deque(prepared.routes),
                   self._clock() + max(self._timeout_s, request.patience_s or 0.0),
                   bool(policy.hedge), prepared.race, policy.strategy or "cheapest")
        run.submits = submits
        run.held = slot
        started = self._clock()
        with tracing.routing(request, prepared.routes, policy.strategy or "cheapest") as span:
            route, result = await run.execute()
            waited = self._clock() - started
            cost = pricing.actual(route.unit_price(request.geometry.tier, request.quality),
                                  result.images_made, route.token_rates, result.usage)
            if result.price_factor is not None:  # served, and billed, at another tier
                cost *= result.price_factor
            served = Served(result, route.id, route.provider.name, route.upstream_model, cost,
                            tuple(run.attempts), result.converted_from,
                            strategy=policy.strategy or "cheapest",
                            quote_usd=route.quote(request), upstream_s=waited)
            span.served(served)
        return served

    async def _generate(self, route: Route, request: ImageRequest, deadline: float,
                        submits: flows.Submits | None = None) -> ImageResult:
        """One attempt: the flow, then what it delivered verified and in the asked format,
        so an image that is not one fails this attempt (and the next route is tried)."""
        with tracing.attempt(route, request) as span:
            result = await flows.generate(
                self._adapters[route.provider.protocol], route, request,
                self._clients[route.provider.name], deadline, self._credentials,
                self.callbacks, self.groups, submits)
            result = await conform(await verify.checked(result, request, self._max_pixels),
                                   request)
            span.delivered(result)
            return result

    def _attempt(self, route: Route, request: ImageRequest, deadline: float,
                 submits: flows.Submits | None, slot: Slot) -> asyncio.Task[ImageResult]:
        """One attempt as a task that holds a slot of its provider until it is done (a done
        callback: it runs even for a task cancelled before it started)."""
        task = asyncio.create_task(self._generate(route, request, deadline, submits))
        task.add_done_callback(lambda _: self._slots.release(slot))
        return task


