"""Billing around one image request: rate limits, the budget reservation, the ledger row.

Order: plan the routes (a 400 if none can serve) -> count against the key's rate limits ->
reserve the quote (the first route's billed price x n) against the key's budget -> run
-> write the ledger row and settle the reservation in one transaction, *before* the response
is sent. A failure is recorded at $0 and releases the reservation. Tenants are billed at most
the quote they were reserved for, so a budget is never overspent.

Queued work (a job, a batch item) comes with a Resume: its upstream submits are written
down (proxy/providers/resume.py), and a run after a crash first takes up what the last one
left, resuming its upstream tasks on their routes and writing the calls it cannot resume to
the ledger as `abandoned` (billed $0, their quote as upstream spend).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response

from proxy import metrics, tracing
from proxy.api import caching, streamed
from proxy.api.errors import ApiError, bad_request, from_failure
from proxy.api.render import Origin, attempt_headers, image_headers, images_body, observe
from proxy.api.request_log import request_line
from proxy.billing.journal import Call
from proxy.billing.keys import KeyRecord
from proxy.billing.limits import Limited
from proxy.billing.money import BILLED, Delivered, Entry, Settle, micros, period_label, usd
from proxy.billing.pricing import DEFAULT_PLAN, Plan
from proxy.catalog import Model
from proxy.domain import ImageRequest, Policy, Served
from proxy.providers.resume import Resume
from proxy.routing.planning import NoRoute, Prepared
from proxy.routing.router import RoutesFailed
from proxy.routing.slots import Slot
from proxy.services import Services

T = TypeVar("T")


# (origin, services, what was asked, what was served) -> the response body, in the surface's
# own shape (OpenAI images by default; chat completions and Gemini have theirs).
Renderer = Callable[[Origin, Services, ImageRequest, Served], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Charged:
    """A served, billed request, before its body goes out: the body, the headers that say who
    served it and what it cost, and the mark to make once it was delivered."""

    content: dict[str, Any]
    headers: dict[str, str]
    delivered: BackgroundTask
    billed: Decimal
    served: Served


async def charge(origin: Origin, svc: Services, key: KeyRecord, model: Model,
                 asked: ImageRequest, idempotency_key: str | None = None,
                 resume: Resume | None = None) -> Response:
    """The OpenAI images response to `asked`, billed."""
    return respond(await charged(origin, svc, key, model, asked, idempotency_key, resume))


async def charged(origin: Origin, svc: Services, key: KeyRecord, model: Model,
                  asked: ImageRequest, idempotency_key: str | None = None,
                  resume: Resume | None = None, *, render: Renderer = images_body,
                  running: asyncio.Future[None] | None = None) -> Charged:
    """Plan, admit, reserve, run and bill `asked`; its body made by `render`. `running` is
    resolved once the request is admitted and paid for and only the run is left (a stream
    starts then: every refusal before it is still a plain HTTP error)."""
    ledger = _Ledger(origin.request_id, svc, key, asked, idempotency_key)
    first = await ledger.take_up(resume, model) if resume is not None else ()
    try:
        prepared = svc.router.prepare(model, asked, Policy(strategy=key.limits.strategy,
                                                           lane=key.limits.lane), first)
    except NoRoute as exc:
        raise bad_request(exc.param, exc.message, code="unsupported_value") from None
    plan = svc.plans.get(key.limits.plan or "default", DEFAULT_PLAN)
    quote = _quote(plan, model, asked, prepared)
    role = await _cache_role(svc, key, model, asked, prepared) if not first else None
    try:
        return await _admitted(_Run(origin, svc, ledger, model, prepared, plan, quote, render,
                                    role), running)
    finally:
        if role is not None:
            role.close()


async def _cache_role(svc: Services, key: KeyRecord, model: Model, asked: ImageRequest,
                      prepared: Prepared) -> caching.Role | None:
    """How the response cache takes part: None if the request is not cacheable."""
    cache = caching.cacheable(svc.config, (asked.cache_ttl_s, key.limits.cache_ttl_s,
                                           model.cache_ttl_s), asked, prepared.routes[0],
                              key.tenant)
    if cache is None:
        return None
    return await caching.consult(svc.flights, svc.store.cache, cache,
                                 prepared.policy.strategy or "cheapest")


async def _admitted(run: _Run, running: asyncio.Future[None] | None) -> Charged:
    """Admit (rate limits, and in fleet mode the first host's slot), reserve, run."""
    svc, key, asked, model = run.svc, run.ledger.key, run.ledger.asked, run.model
    role = run.role
    quote = run.quote
    if role is not None and role.found is not None:  # a hit's bill is known before it runs
        quote = min(quote, run.plan.cached(model.name, asked.geometry.tier,
                                           role.found.made_for,
                                           len(role.found.served.result.images)))
        run = replace(run, quote=quote)
    # A batch item takes its slot apart (only if no interactive request waits for one); an
    # answer from the cache or from a flight calls no host.
    host = None if asked.patience_s or (role is not None and role.reuses) \
        else run.prepared.routes[0].provider
    try:
        admission = await svc.limits.admit(key, asked.n, host)
    except Limited as exc:
        metrics.KEY_REJECTIONS.labels(_key_label(svc, key), "rate").inc()
        metrics.REQUESTS.labels(model.name, "none", "rate_limited_key").inc()
        request_line(run.origin.request_id, key.id, asked, "rate_limited_key",
                     seconds=0.0, with_prompt=svc.config.log_prompts)
        raise ApiError(429, exc.message, type="requests", code="rate_limit_exceeded",
                       headers=exc.headers) from None
    slot = admission.slot  # fleet mode: the first host's slot, taken with the admission
    try:
        reservation = await run.ledger.reserve(quote)
        slot = None  # the router's from here: it uses the slot or releases it
        if running is not None and not running.done():
            running.set_result(None)
        done = await _run(run, reservation, admission.slot)
        done.headers.update(admission.headers)
        return done
    finally:
        try:
            if slot is not None:
                svc.state.slots.release(slot)
        finally:
            await svc.limits.done(admission)


def _quote(plan: Plan, model: Model, asked: ImageRequest, prepared: Prepared) -> Decimal:
    """The price before the call: the plan's price on the route the router will try first,
    times n. It is also the most the request is billed: if a failover lands on a dearer route,
    Switchyard absorbs the difference, so a budget is never overspent."""
    tier = asked.geometry.tier
    first = prepared.routes[0]
    return plan.per_image(model.name, tier, first.unit_price(tier, asked.quality)) * asked.n


@dataclass(frozen=True, slots=True)
class _Run:
    """What one run needs besides its reservation and host slot."""

    origin: Origin
    svc: Services
    ledger: _Ledger
    model: Model
    prepared: Prepared
    plan: Plan
    quote: Decimal
    render: Renderer
    role: caching.Role | None = None


async def _served(run: _Run, slot: Slot | None) -> tuple[Served, caching.Reuse | None]:
    """The answer: from the cache, from the identical request in flight, or from a host."""
    role = run.role
    if role is not None and role.found is not None:
        return role.found.served, role.found
    if role is not None and role.how == "coalesced":
        shared = await role.wait()
        if shared is not None:
            return shared.served, shared
        # The leader left without an answer: this request calls a host itself.
    served = await run.svc.router.run(run.prepared, run.ledger.asked, run.ledger.resume, slot)
    if role is not None:
        role.landed(served)
    return served, None


async def _run(run: _Run, reservation: str | None, slot: Slot | None) -> Charged:
    svc, ledger, model = run.svc, run.ledger, run.model
    started = time.monotonic()
    try:
        served, reuse = await _served(run, slot)
    except RoutesFailed as exc:
        if run.role is not None:
            run.role.failed(exc)
        await ledger.failed(reservation, exc, started)
        _observe_failure(model, exc, time.monotonic() - started)
        ledger.log(exc.failure.kind.value, started, exc.attempts[-1].provider
                   if exc.attempts else None, len(exc.attempts))
        error = from_failure(exc.failure, len(exc.attempts))
        error.headers.update(attempt_headers(exc.attempts))
        raise error from None
    except BaseException:
        # The client went away or Switchyard broke: nothing delivered, nothing billed.
        await asyncio.shield(ledger.abandoned(reservation, started))
        metrics.REQUESTS.labels(model.name, "none", "cancelled").inc()
        raise
    try:
        content = await run.render(run.origin, svc, ledger.asked, served)
    except BaseException:
        # Storing the images failed (or the client left): nothing is delivered or billed, the
        # hold goes, and the row keeps what the upstream was paid.
        await asyncio.shield(ledger.undelivered(reservation, served, started))
        metrics.REQUESTS.labels(model.name, served.provider, "undelivered").inc()
        raise
    delivered, tier = len(served.result.images), ledger.asked.geometry.tier
    if reuse is None:
        billed = min(run.quote, run.plan.per_image(model.name, tier,
                                                   served.cost_usd / delivered) * delivered)
        outcome = "success"
        observe(model, ledger.asked, served, time.monotonic() - started)
    else:
        billed = min(run.quote, run.plan.cached(model.name, tier, reuse.made_for, delivered))
        outcome = caching.OUTCOMES[reuse.how]
    await ledger.succeeded(reservation, served, billed, started, outcome)
    ledger.log(outcome, started, served.provider, len(served.attempts), billed,
               served.cost_usd + served.hedge_cost_usd)
    label = _key_label(svc, ledger.key)
    metrics.BILLED.labels(label, model.name, served.provider).inc(float(billed))
    metrics.UPSTREAM_COST.labels(label, model.name, served.provider).inc(
        float(served.cost_usd + served.hedge_cost_usd))
    headers = image_headers(ledger.asked, served)
    headers["x-switchyard-billed-usd"] = f"{billed:.6f}"
    if run.role is not None:
        await _cached(run, served, reuse)
        headers["x-switchyard-cache"] = reuse.how if reuse is not None else "miss"
    return Charged(content, headers, BackgroundTask(ledger.delivered), billed, served)


async def _cached(run: _Run, served: Served, reuse: caching.Reuse | None) -> None:
    """The cache's part once a request is billed: its metrics, and a miss's whole answer kept
    (a short one, fewer images than asked, is not) where the host that made it allows."""
    assert run.role is not None
    caching.observe(run.model, run.ledger.asked, run.role, reuse)
    if reuse is None and len(served.result.images) == run.ledger.asked.n and \
            run.role.cache.keeps(caching.route_of(run.model, served.route_id)):
        await caching.keep(run.svc.store.cache, run.svc.config.cache_max_bytes, run.role,
                           run.model, served)


def respond(done: Charged) -> Response:
    """The response, serialized only once the row is in (a request waiting for its row holds
    one copy of its images, not two). Big base64 strings are never copied whole (orjson.dumps
    would copy each image once more and hold it until a slow client has read it): they go
    out in slices."""
    big = any(len(image.b64) >= streamed.MIN_STREAMED for image in done.served.result.images)
    pieces = streamed.split(done.content) if big else None
    if pieces is not None:
        return streamed.PiecesResponse(pieces, 200, done.headers, done.delivered)
    return Response(orjson.dumps(done.content), 200, done.headers, "application/json",
                    background=done.delivered)


def _key_label(svc: Services, key: KeyRecord) -> str:
    return key.id if svc.config.metrics_per_key else "-"


def count_abandoned(svc: Services, calls: list[Call]) -> None:
    """Upstream spend of calls a crash cut off, written to the ledger as abandoned."""
    for call in calls:
        metrics.UPSTREAM_COST.labels(call.key_id if svc.config.metrics_per_key else "-",
                                     call.model, call.provider).inc(
            float(usd(call.upstream_micros)))


def _hold(asked: ImageRequest) -> float | None:
    """A patient request's budget hold outlives the usual sweep: it may settle hours later."""
    return asked.patience_s + 3600 if asked.patience_s else None


def _observe_failure(model: Model, exc: RoutesFailed, seconds: float) -> None:
    last = exc.attempts[-1].provider if exc.attempts else "none"
    metrics.REQUESTS.labels(model.name, last, exc.failure.kind.value).inc()
    metrics.REQUEST_SECONDS.labels(model.name, exc.failure.kind.value).observe(seconds)
    if exc.failure.kind.value == "content_blocked":
        metrics.CONTENT_BLOCKS.labels(model.name, last).inc()


class _Ledger:
    """The request's budget reservation and its one ledger row."""

    def __init__(self, request_id: str, svc: Services, key: KeyRecord, asked: ImageRequest,
                 idempotency_key: str | None) -> None:
        self.request_id = request_id
        self.svc = svc
        self.key = key
        self.asked = asked
        self.idempotency_key = idempotency_key
        self.period = period_label(key.limits.budget_period, time.time())
        self.resume: Resume | None = None  # a queued request's upstream submits

    async def take_up(self, resume: Resume, model: Model) -> frozenset[str]:
        """Take up what earlier runs of this queued request left in the journal; the routes
        that hold its upstream tasks, to be tried first."""
        self.resume = resume
        routes = [route.id for route in model.routes]
        count_abandoned(self.svc, await resume.open(routes, self.key.id, self.key.tenant))
        return resume.resumed

    async def reserve(self, quote: Decimal) -> str | None:
        """The budget reservation; None (and no database round trip) for a key without a
        budget, whose bill is added to `spent` when it settles."""
        budget = self.key.limits.budget_usd
        if budget is None:
            return None
        reservation = await self._write(
            self.svc.store.money.reserve, self.key.id, self.period, micros(quote),
            micros(budget), _hold(self.asked))
        if reservation is None:
            metrics.KEY_REJECTIONS.labels(_key_label(self.svc, self.key), "budget").inc()
            metrics.REQUESTS.labels(self.asked.model, "none", "quota").inc()
            self.log("quota", time.monotonic(), None, 0)
            raise ApiError(429, f"This key's {self.key.limits.budget_period} budget of "
                                f"${budget} cannot cover this request (quoted ${quote:.6f}). "
                                f"Raise the budget or wait for the next period.",
                           type="insufficient_quota", code="insufficient_quota")
        return reservation

    async def succeeded(self, reservation: str | None, served: Served, billed: Decimal,
                        started: float, outcome: str = "success") -> None:
        upstream = served.cost_usd + served.hedge_cost_usd
        await self._settle(reservation, self._entry(
            started, outcome, served.provider, served.route_id, len(served.result.images),
            micros(billed), micros(upstream), len(served.attempts),
            served.result.upstream_id))

    async def failed(self, reservation: str | None, exc: RoutesFailed, started: float) -> None:
        last = exc.attempts[-1] if exc.attempts else None
        await self._settle(reservation, self._entry(
            started, exc.failure.kind.value, last.provider if last else None,
            last.route_id if last else None, 0, 0, 0, len(exc.attempts), None))

    async def undelivered(self, reservation: str | None, served: Served,
                          started: float) -> None:
        await self._settle(reservation, self._entry(
            started, "undelivered", served.provider, served.route_id, 0, 0,
            micros(served.cost_usd + served.hedge_cost_usd), len(served.attempts),
            served.result.upstream_id))

    async def abandoned(self, reservation: str | None, started: float) -> None:
        await self._settle(reservation, self._entry(started, "cancelled", None, None, 0, 0, 0,
                                                    0, None))

    def log(self, outcome: str, started: float, provider: str | None, attempts: int,
            billed: Decimal | None = None, upstream: Decimal | None = None) -> None:
        request_line(self.request_id, self.key.id, self.asked, outcome,
                     seconds=time.monotonic() - started, provider=provider, attempts=attempts,
                     billed=billed, upstream=upstream, with_prompt=self.svc.config.log_prompts)

    async def delivered(self) -> None:
        """After the response went out: mark the row delivered and refresh the budget gauge
        on a ledger thread, with the next ledger write (nothing waits for either, and a
        write of their own would wake a thread for each request)."""
        self.svc.ledger_writes.later_each(_write_each, (self, None))

    async def _write(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on a ledger thread: database I/O stays off the event loop."""
        return await self.svc.ledger_writes.run(call, *args)

    async def _settle(self, reservation: str | None, entry: Entry) -> None:
        metrics.LEDGER_BACKLOG.inc()
        try:
            with tracing.ledger(entry):
                await self.svc.ledger_writes.each(_write_each,
                                                  (self, (reservation, entry, self.period)))
        finally:
            metrics.LEDGER_BACKLOG.dec()

    def _entry(self, started: float, outcome: str, provider: str | None, route: str | None,
               delivered: int, billed: int, upstream: int, attempts: int,
               upstream_id: str | None) -> Entry:
        return Entry(
            request_id=self.request_id, key_id=self.key.id, tenant=self.key.tenant,
            model=self.asked.model, provider=provider, route=route,
            tier=self.asked.geometry.tier, n_asked=self.asked.n, n_delivered=delivered,
            billed_micros=billed, upstream_micros=upstream,
            latency_ms=round((time.monotonic() - started) * 1000),
            outcome=outcome, failure=None if outcome in BILLED else outcome,
            attempts=attempts, upstream_id=upstream_id,
            idempotency_key=self.idempotency_key, created_at=int(time.time()))


def _write_each(writes: list[tuple[_Ledger, Settle | None]]) -> list[BaseException | None]:
    """On a ledger thread: the settles and delivered marks (None) that went together, in one
    transaction; then the budget gauge of each key and window among the marks, once."""
    money = writes[0][0].svc.store.money
    done = money.write_each([Delivered(ledger.request_id) if settle is None else settle
                             for ledger, settle in writes])
    marked = {(ledger.key.id, ledger.period): ledger for ledger, settle in writes
              if settle is None and ledger.key.limits.budget_usd is not None}
    for ledger in marked.values():
        budget = ledger.key.limits.budget_usd
        assert budget is not None
        spent, held = money.spent(ledger.key.id, ledger.period)
        metrics.BUDGET_REMAINING.labels(_key_label(ledger.svc, ledger.key)).set(
            float(budget - spent - held))
    return done
