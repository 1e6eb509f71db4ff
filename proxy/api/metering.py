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

from proxy import metrics
from proxy.api import caching, streamed
from proxy.api.errors import ApiError, bad_request, from_failure
from proxy.api.ledger import Ledger, key_label
from proxy.api.render import Origin, attempt_headers, image_headers, images_body, observe
from proxy.api.request_log import request_line
from proxy.billing.keys import KeyRecord
from proxy.billing.limits import Limited
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
                  running: asyncio.Future[dict[str, str]] | None = None) -> Charged:
    """Plan, admit, reserve, run and bill `asked`; its body made by `render`. `running` is
    resolved once the request is admitted and paid for and only the run is left, with the
    admission's headers (a stream starts then, with them: every refusal before it is still a
    plain HTTP error)."""
    with svc.ledger_writes.writing():  # alone, its row is written on the loop's thread
        ledger = Ledger(origin.request_id, svc, key, asked, idempotency_key)
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
            return await _admitted(_Run(origin, svc, ledger, model, prepared, plan, quote,
                                        render, role), running)
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


async def _admitted(run: _Run, running: asyncio.Future[dict[str, str]] | None) -> Charged:
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
        metrics.KEY_REJECTIONS.labels(key_label(svc, key), "rate").inc()
        metrics.REQUESTS.labels(model.name, "none", "rate_limited_key").inc()
        request_line(run.origin.request_id, key.id, asked, "rate_limited_key",
                     seconds=0.0, with_prompt=svc.config.log_prompts)
        raise ApiError(429, exc.message, type="requests", code="rate_limit_exceeded",
                       headers=exc.headers) from None
    slot = admission.slot  # fleet mode: the first host's slot, taken with the admission
    try:
        try:
            reservation = await run.ledger.reserve(quote)
            slot = None  # the router's from here: it uses the slot or releases it
            if running is not None and not running.done():
                running.set_result(dict(admission.headers))
            done = await _run(run, reservation, admission.slot)
        except ApiError as exc:  # admitted and counted: a limited key's figures go with it
            exc.headers = {**admission.headers, **exc.headers}
            raise
        done.headers.update(admission.headers)
        return done
    finally:
        try:
            if slot is not None:
                svc.state.slots.release(slot)
        finally:
            await svc.limits.done(admission)


def _quote(plan: Plan, model: Model, asked: ImageRequest, prepared: Prepared) -> Decimal:
    """The price before the call: the plan's price on the route the router will try first
    (its images, and the input a route that bills input tokens charges), times n. It is also
    the most the request is billed: if a failover lands on a dearer route, Switchyard absorbs
    the difference, so a budget is never overspent."""
    upstream = prepared.routes[0].quote(asked) / asked.n
    return plan.per_image(model.name, asked.geometry.tier, upstream) * asked.n


@dataclass(frozen=True, slots=True)
class _Run:
    """What one run needs besides its reservation and host slot."""

    origin: Origin
    svc: Services
    ledger: Ledger
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
        # Each image at what the host charged per image it made (it may have made more
        # than were asked: those were cut, and are not the tenant's to pay).
        made = served.result.images_made
        billed = min(run.quote, run.plan.per_image(model.name, tier,
                                                   served.cost_usd / made) * delivered)
        outcome = "success"
        observe(model, ledger.asked, served, time.monotonic() - started)
    else:
        billed = min(run.quote, run.plan.cached(model.name, tier, reuse.made_for, delivered))
        outcome = caching.OUTCOMES[reuse.how]
    # What the row billed: nothing if this run lost its job meanwhile (the metric follows).
    written = await ledger.succeeded(reservation, served, billed, started, outcome)
    ledger.log(outcome, started, served.provider, len(served.attempts), written,
               served.cost_usd + served.hedge_cost_usd)
    label = key_label(svc, ledger.key)
    metrics.BILLED.labels(label, model.name, served.provider).inc(float(written))
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


def _observe_failure(model: Model, exc: RoutesFailed, seconds: float) -> None:
    last = exc.attempts[-1].provider if exc.attempts else "none"
    metrics.REQUESTS.labels(model.name, last, exc.failure.kind.value).inc()
    metrics.REQUEST_SECONDS.labels(model.name, exc.failure.kind.value).observe(seconds)
    if exc.failure.kind.value == "content_blocked":
        metrics.CONTENT_BLOCKS.labels(model.name, last).inc()
