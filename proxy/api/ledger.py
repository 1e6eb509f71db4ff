"""A request's budget reservation and its one ledger row, written by the ledger's writer
thread (or, for a request alone in the process on SQLite, on the event loop's thread): the
settle before the response, the delivered mark after it, with the next settle."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

from proxy import metrics, tracing
from proxy.api.errors import ApiError
from proxy.api.request_log import request_line
from proxy.billing.amounts import micros, period_label, usd
from proxy.billing.journal import ABANDONED, Call
from proxy.billing.keys import KeyRecord
from proxy.billing.rows import BILLED, Delivered, Entry, Settle
from proxy.catalog import Model
from proxy.domain import ImageRequest, Served
from proxy.providers.resume import Resume
from proxy.routing.router import RoutesFailed
from proxy.services import Services

T = TypeVar("T")
log = logging.getLogger("switchyard.ledger")


def key_label(svc: Services, key: KeyRecord) -> str:
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


class Ledger:
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
            micros(budget), _hold(self.asked), self.asked.ticket,
            self.resume.claim if self.resume is not None else None)
        if reservation is None:
            metrics.KEY_REJECTIONS.labels(key_label(self.svc, self.key), "budget").inc()
            metrics.REQUESTS.labels(self.asked.model, "none", "quota").inc()
            self.log("quota", time.monotonic(), None, 0)
            raise ApiError(429, f"This key's {self.key.limits.budget_period} budget of "
                                f"${budget} cannot cover this request (quoted ${quote:.6f}). "
                                f"Raise the budget or wait for the next period.",
                           type="insufficient_quota", code="insufficient_quota")
        return reservation

    async def succeeded(self, reservation: str | None, served: Served, billed: Decimal,
                        started: float, outcome: str = "success") -> Decimal:
        """The row of a delivered request; what it billed (nothing, if this run no longer
        held its job: see _settle)."""
        upstream = served.cost_usd + served.hedge_cost_usd
        written = await self._settle(reservation, self._entry(
            started, outcome, served.provider, served.route_id, len(served.result.images),
            micros(billed), micros(upstream), len(served.attempts),
            served.result.upstream_id))
        return Decimal(0) if written.outcome == ABANDONED else billed

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
        with the next ledger write (nothing waits for either, and a write of their own would
        cost a commit and wake a thread for each request)."""
        self.svc.ledger_writes.later_each(_write_each, (self, None))

    async def _write(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on a ledger thread: database I/O stays off the event loop."""
        return await self.svc.ledger_writes.run(call, *args)

    async def _settle(self, reservation: str | None, entry: Entry) -> Entry:
        if self.resume is not None and not await self.resume.ours():
            # Another run holds the job now (this one's lease ran out while it went on): that
            # run bills it and writes its outcome. This one's upstream spend is kept under a
            # row of its own, billed nothing; its hold goes back.
            entry = replace(entry, request_id=f"{entry.request_id}.{secrets.token_hex(4)}",
                            outcome=ABANDONED, failure=ABANDONED, n_delivered=0,
                            billed_micros=0)
        metrics.LEDGER_BACKLOG.inc()
        try:
            with tracing.ledger(entry):
                await self.svc.ledger_writes.each(
                    _write_each, (self, (reservation, entry, self.period)), _write_now)
        finally:
            metrics.LEDGER_BACKLOG.dec()
        return entry

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


def _write_each(writes: list[tuple[Ledger, Settle | None]]) -> list[BaseException | None]:
    """On a ledger thread: the settles and delivered marks (None) that went together, in one
    transaction; then the budget gauge of each key and window among the marks, once. A gauge
    that cannot be read fails the marks (counted and logged), never the settles."""
    done = writes[0][0].svc.store.money.write_each(
        [Delivered(ledger.request_id) if settle is None else settle for ledger, settle in writes])
    try:
        _refresh_budgets([ledger for ledger, settle in writes if settle is None])
    except Exception as exc:
        return [exc if settle is None else outcome
                for (_, settle), outcome in zip(writes, done, strict=True)]
    return done


def _write_now(writes: list[tuple[Ledger, Settle | None]]) -> None:
    """_write_each's transaction on the event loop's thread, if SQLite's write lock is free
    this instant (else it raises, nothing written, and the writer sends them to its thread),
    the budget gauges read in it."""
    budgets = _budgets([ledger for ledger, settle in writes if settle is None])
    figures = writes[0][0].svc.store.money.write_now(
        [Delivered(ledger.request_id) if settle is None else settle for ledger, settle in writes],
        [(ledger.key.id, ledger.period) for ledger in budgets])
    try:
        for ledger, (spent, held) in zip(budgets, figures, strict=True):
            _show_budget(ledger, spent, held)
    except Exception as exc:  # written: raising would have the thread write them again
        # Its kind, not its message (values may hold secrets).
        log.error("a budget gauge could not be set (%s)", type(exc).__name__)


def _refresh_budgets(marked: list[Ledger]) -> None:
    for ledger in _budgets(marked):
        _show_budget(ledger, *ledger.svc.store.money.spent(ledger.key.id, ledger.period))


def _budgets(marked: list[Ledger]) -> list[Ledger]:
    """One of the marked requests for each key and window with a budget."""
    return list({(ledger.key.id, ledger.period): ledger for ledger in marked
                 if ledger.key.limits.budget_usd is not None}.values())


def _show_budget(ledger: Ledger, spent: Decimal, held: Decimal) -> None:
    ledger.svc.budget_gauges.show(key_label(ledger.svc, ledger.key), ledger.key, spent, held)
