"""One request's execution: the routes still to try, the attempts in flight and made.

The Router (router.py) holds what lasts (adapters, clients, health, slots); a Run is one
request's pass over its plan: start the best route, move on after a retryable failure, hedge
past the route's 97th percentile, release every slot it took. An attempt that hangs (past its
route's stall time with nothing delivered there since it began, routing/health.py) does not
hold the request to its full timeout: without hedging it is ended as a timeout and the next
route starts (recorded at $0: a call that never answered is taken as unbilled); with hedging
the next route races it; either only when the next route can take over now.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from proxy import metrics
from proxy.catalog import Route
from proxy.domain import Attempt, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import flows
from proxy.routing import second
from proxy.routing.attempts import (
    DEADLINE_GRACE_S,
    PATIENT_RECHECK_S,
    SATURATED_RETRY_AFTER_S,
    Live,
    RoutesFailed,
    hang,
)
from proxy.routing.health import State
from proxy.routing.slots import Slot

__all__ = ["DEADLINE_GRACE_S", "PATIENT_RECHECK_S", "SATURATED_RETRY_AFTER_S", "Live",
           "RoutesFailed", "Run"]

if TYPE_CHECKING:
    from proxy.routing.router import Router

class Run:
    """One request's execution: the routes still to try, the attempts in flight and made."""

    def __init__(self, router: Router, request: ImageRequest, pending: deque[Route],
                 deadline: float, hedge: bool, race: bool = False,
                 strategy: str = "cheapest") -> None:
        self.router = router
        self.request = request
        self.pending = pending
        self.deadline = deadline
        self.hedge = hedge
        self.race = race  # the first route is a probe: the second starts with it
        self.strategy = strategy  # whether a hedge pays depends on what the request values
        self.running: dict[asyncio.Task[ImageResult], Live] = {}
        self.attempts: list[Attempt] = []
        self.last: Failure | None = None
        self.saturated = False
        self.full: list[Route] = []  # routes skipped for want of a slot
        self.submits: flows.Submits | None = None  # a queued request's submits, written down
        self.held: Slot | None = None  # a slot taken before the run (with the admission)
        self.moved: Live | None = None  # the attempt ended because it hung
        self._watching: asyncio.TimerHandle | None = None  # the look at its stall time

    async def execute(self) -> tuple[Route, ImageResult]:
        won = False
        if self.request.partials is not None:
            self.request.partials.on_commit(self._commit)
        try:
            found = await (self._loop() if self.hedge or self.race else self._one_at_a_time())
            won = True
            return found
        finally:
            if self.held is not None:  # its host was never tried
                self.router._slots.release(self.held)
                self.held = None
            self._cancel_all(won)

    async def _one_at_a_time(self) -> tuple[Route, ImageResult]:
        """Without hedging, attempts run one after another, each in this task: no task of its
        own and no asyncio.wait per request. Same outcomes as _loop: a failure moves on to
        the next route, and an attempt that outlives its deadline (and the grace) is ended."""
        while True:
            live = await self._start_next()
            if live is None:
                raise RoutesFailed(self._final_failure(), tuple(self.attempts))
            backstop = min(self.deadline, live.deadline) + DEADLINE_GRACE_S
            error: BaseException | None = None
            try:
                async with asyncio.timeout(max(0.0, backstop - self.router._clock())) as limit:
                    self._watch(live, limit)
                    result = await self.router._generate(live.route, self.request,
                                                         live.deadline, self.submits)
            except UpstreamError as exc:
                error = exc
            except TimeoutError:
                if not limit.expired():
                    self.router.health.of(live.route).abandon(live.token)
                    raise
                if self.moved is live:  # it hung: the next route's turn
                    self.moved = None
                    metrics.RESCUES.labels(self.request.model, "moved").inc()
                    self._expire_one(live, hang(live, second.stall_s(self, live)))
                    continue
                if live.deadline < self.deadline:  # its own deadline: the next route's turn
                    self._expire_one(live)
                    continue
                # The request's backstop: as in _loop, the attempt is given up without evidence.
                self.router.health.of(live.route).abandon(live.token)
                raise RoutesFailed(Failure(Kind.TIMEOUT, "request deadline reached"),
                                   tuple(self.attempts)) from None
            except BaseException:
                self.router.health.of(live.route).abandon(live.token)
                raise
            finally:
                if self._watching is not None:
                    self._watching.cancel()
                    self._watching = None
                self.router._slots.release(live.slot)
            outcome = self._ended(live, error, None if error else result)
            if outcome is not None:
                return live.route, outcome

    def _watch(self, live: Live, limit: asyncio.Timeout) -> None:
        """At the attempt's stall time, end it (through `limit`) if it hung and another
        route is left to try within the request's time."""
        if not self.pending or live.route.provider.deferred:
            return
        loop = asyncio.get_running_loop()

        def look() -> None:
            now = self.router._clock()
            due = live.started + second.stall_s(self, live)
            if now < due:  # the loop's timers may run a hair early (uvloop counts in ms)
                self._watching = loop.call_later(due - now, look)
            elif second.rescuable(self) and now < self.deadline and \
                    self.router.health.of(live.route).hung(live.token,
                                                           self.request.geometry.tier):
                self.moved = live
                limit.reschedule(loop.time())

        self._watching = loop.call_later(
            max(0.0, live.started + second.stall_s(self, live) - self.router._clock()), look)

    async def _loop(self) -> tuple[Route, ImageResult]:
        hedge_at: float | None = None
        while True:
            if not self.running:
                if not await self._launch_next():
                    raise RoutesFailed(self._final_failure(), tuple(self.attempts))
                hedge_at = second.hedge_time(self)
            now = self.router._clock()
            wake = min(self.deadline, hedge_at) if hedge_at is not None else self.deadline
            watch_at = second.watch_time(self)
            if watch_at is not None:
                wake = min(wake, watch_at)
            # An attempt held to a shorter deadline than the request's (a patient request on
            # an interactive route) is ended by its own backstop.
            wake = min([wake, *(live.deadline + DEADLINE_GRACE_S
                                for live in self.running.values() if live.deadline < wake)])
            done, _ = await asyncio.wait(self.running, timeout=max(0.0, wake - now),
                                         return_when=asyncio.FIRST_COMPLETED)
            done = {task for task in done if task in self.running}  # not one _commit ended
            if not done:
                now = self.router._clock()
                if hedge_at is not None and now >= hedge_at:
                    hedge_at = None
                    metrics.HEDGES.labels(self.request.model).inc()
                    await self._launch_next()
                elif watch_at is not None and now >= watch_at:
                    if second.all_hung(self, now) and second.rescuable(self):  # race the next route
                        metrics.RESCUES.labels(self.request.model, "raced").inc()
                        hedge_at = None
                        await self._launch_next()
                elif now >= self.deadline + DEADLINE_GRACE_S:
                    # The flows end themselves at the deadline; this is the backstop.
                    raise RoutesFailed(Failure(Kind.TIMEOUT, "request deadline reached"),
                                       tuple(self.attempts))
                else:
                    self._expire(now)
                continue
            # Successes first: an image that arrived is never thrown away for a failure.
            for task in sorted(done, key=lambda t: t.exception() is not None):
                live = self.running.pop(task)
                outcome = self._settle(task, live)
                if outcome is not None:
                    return live.route, outcome

    def _settle(self, task: asyncio.Task[ImageResult], live: Live) -> ImageResult | None:
        error = task.exception()
        return self._ended(live, error, None if error else task.result())

    def _ended(self, live: Live, error: BaseException | None,
               result: ImageResult | None) -> ImageResult | None:
        """Record a finished attempt; its result if it delivered. Raises when it failed in a
        way no other route can fix."""
        health = self.router.health.of(live.route)
        if error is None:
            seconds = health.end(live.token, self.request.geometry.tier, None)
            self._record(live.route, None, seconds)
            return result
        if not isinstance(error, UpstreamError):
            health.abandon(live.token)
            raise error
        failure = error.failure
        seconds = health.end(live.token, self.request.geometry.tier, failure)
        self._record(live.route, failure, seconds)
        if not failure.retryable:
            raise RoutesFailed(failure, tuple(self.attempts))
        self.last = failure
        return None

    def _expire(self, now: float) -> None:
        """End attempts past their own deadline (and grace) as timeouts; the next route
        gets its turn."""
        for task, live in list(self.running.items()):
            if now >= live.deadline + DEADLINE_GRACE_S:
                task.cancel()
                del self.running[task]
                self._expire_one(live)

    def _expire_one(self, live: Live, failure: Failure | None = None) -> None:
        failure = failure or Failure(Kind.TIMEOUT, "request deadline reached")
        seconds = self.router.health.of(live.route).end(live.token, self.request.geometry.tier,
                                                        failure)
        self._record(live.route, failure, seconds)
        self.last = failure

    async def _launch_next(self) -> bool:
        """Start the next route as a task of its own; False when none is left to start."""
        live = await self._start_next()
        if live is None:
            return False
        self.running[self.router._attempt(live.route, self.request, live.deadline,
                                          self.submits, live.slot)] = live
        return True

    async def _start_next(self) -> Live | None:
        """Take a slot of the next route that has a free one and begin its attempt; None when
        none is left to start. A patient request (a batch item) with nothing running waits
        for a slot of a full route instead of giving up: the queue holds it, not the client.
        An interactive one whose routes are all full waits for a slot that batch items owe
        it, if any does (proxy/routing/slots.py)."""
        while True:
            if (live := await self._start_pending()) is not None:
                return live
            if not self.full or self.running:
                return None
            remaining = self.deadline - self.router._clock()
            if remaining <= 0:
                return None
            if not self.request.patience_s:  # the first full route that owes it a slot
                for route in self.full:
                    slot = await self.router._slots.acquire(route.provider, 0.0,
                                                            owed_s=remaining)
                    if slot is not None:
                        return self._begin(route, slot)
                return None
            await self.router._slots.released([r.provider for r in self.full],
                                              min(PATIENT_RECHECK_S, remaining))
            self.pending.extend(self.full)
            self.full.clear()

    async def _start_pending(self) -> Live | None:
        while self.pending:
            route = self.pending.popleft()
            now = self.router._clock()
            # A patient request never waits on one full route: the next one may have a slot.
            # But a route holding this request's upstream task is waited for: another route
            # would be paid again for the same work.
            wait = 0.0 if self.request.patience_s else \
                min(self.router._slots.wait_s, self.deadline - now)
            if self.submits is not None and route.id in self.submits.resumed:
                wait = max(0.0, self.deadline - now)
            slot = self._take_held(route)
            if slot is None:
                slot = await self.router._slots.acquire(route.provider, wait,
                                                        bool(self.request.patience_s))
            if slot is None:
                self.saturated = True
                self.full.append(route)
                continue
            return self._begin(route, slot)
        return None

    def _begin(self, route: Route, slot: Slot) -> Live:
        health = self.router.health.of(route)
        probe = health.state is State.HALF_OPEN  # this attempt is its breaker's probe
        token = health.begin()
        now = self.router._clock()
        # Only a deferred route gets a patient request's whole window; any other host is
        # held to the usual request timeout, and a probe to its route's stall time: a host
        # that still hangs costs the client that much, then the next route serves it.
        deadline = self.deadline if route.provider.deferred else \
            min(self.deadline, now + self.router._timeout_s)
        if probe and not route.provider.deferred:
            deadline = min(deadline, now + health.stall_s(self.request.geometry.tier))
        return Live(route, token, now, deadline, slot)

    def _take_held(self, route: Route) -> Slot | None:
        held = self.held
        if held is None or held.provider.name != route.provider.name:
            return None
        self.held = None
        return held

    def _final_failure(self) -> Failure:
        if self.last is not None:
            return self.last
        if self.saturated:
            return Failure(Kind.OVERLOADED, "every route for this model is at its concurrency "
                                            "limit; retry shortly", SATURATED_RETRY_AFTER_S)
        return Failure(Kind.UPSTREAM_BROKEN, "no route could be tried")

    def _record(self, route: Route, failure: Failure | None, seconds: float) -> None:
        outcome = failure.kind.value if failure else "success"
        metrics.UPSTREAM_ATTEMPTS.labels(self.request.model, route.provider.name, outcome).inc()
        metrics.UPSTREAM_SECONDS.labels(route.provider.name, outcome).observe(seconds)
        self.attempts.append(Attempt(route.id, route.provider.name,
                                     failure.kind.value if failure else None, seconds))

    def _commit(self, route_id: str) -> None:
        """A streamed attempt relayed its first partial image: the client saw that host's
        drafts, so the run is its route's. No other route is tried or kept (no failover,
        hedge or hang rescue from here: none is left pending), and its failure is final."""
        self.pending.clear()
        self.full.clear()
        for task, live in list(self.running.items()):
            if live.route.id != route_id:
                del self.running[task]
                task.cancel()
                self.router.health.of(live.route).abandon(live.token)
                self._cancelled(live)

    def _cancel_all(self, won: bool) -> None:
        """Cancel attempts still in flight. What they started is counted at its quote. One
        that lost to another route (`won`) is evidence when it ran past its p95
        (RouteHealth.lost); any other cancel (the client left) is none."""
        tier = self.request.geometry.tier
        for task, live in self.running.items():
            ended = task.done()  # finished beside the winner: no loser, whatever it was
            task.cancel()
            health = self.router.health.of(live.route)
            if won and not ended:
                health.lost(live.token, tier)
            else:
                health.abandon(live.token)
            self._cancelled(live)
        self.running.clear()

    def _cancelled(self, live: Live) -> None:
        """A cancelled attempt's record: hosts bill work they started, so at its quote."""
        self.attempts.append(Attempt(live.route.id, live.route.provider.name, "hedged",
                                     self.router._clock() - live.started,
                                     live.route.quote(self.request)))
