"""A queued request's upstream submits, written down as its flows make them (the journal in
proxy/billing/journal.py), so that its run after a crash resumes what the last run started.

The run first takes up what earlier runs left (`open`): a submit whose reply was kept is
answered from the journal when the flow makes it again, so the flow polls the upstream task
it already paid for, on the route that has it (the router tries those routes first); any
other call left is reported to the ledger as `abandoned`. After the run (`close`), calls it
was to resume but never went back to are reported too, and its other rows go. Only queued
work (jobs, batch items: requests with a ticket) pays these database writes; an interactive
request has no Resume at all.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence

import httpx

from proxy.billing.db import DatabaseUnavailable
from proxy.billing.deferred import Deferred
from proxy.billing.journal import Answer, Call, Journal
from proxy.billing.money import micros
from proxy.catalog import Route
from proxy.domain import ImageRequest
from proxy.providers.base import UpstreamReply
from proxy.supervise import Failures

# A reply bigger than this is not kept (a submit's reply that a flow goes on from is a task's
# id and status, a few hundred bytes): after a crash that call shows as abandoned.
MAX_KEPT_BYTES = 1024 * 1024


class Resume:
    """One run of one ticketed request: implements flows.Submits."""

    def __init__(self, journal: Journal, deferred: Deferred, ticket: str, key_id: str,
                 tenant: str) -> None:
        self._journal = journal
        self._deferred = deferred
        self._payer = (ticket, key_id, tenant)
        # (route id, part, ordinal) -> (call id, its reply): submits to answer from the journal
        self._kept: dict[tuple[str, int, int], tuple[str, UpstreamReply]] = {}
        self._live: set[str] = set()  # rows of this run not dropped yet
        self.resumed: frozenset[str] = frozenset()

    async def open(self, routes: Sequence[str]) -> list[Call]:
        """Take up what earlier runs left: the calls with a kept reply on one of `routes` are
        to be resumed (`resumed` names their routes); the others are written to the ledger as
        abandoned, and returned."""
        kept, abandoned = await asyncio.to_thread(self._journal.recover, self._payer[0], routes)
        for call, answer in kept:
            self._kept[(call.route, call.part, call.ordinal)] = (call.id, _reply(answer))
            self._live.add(call.id)
        self.resumed = frozenset(call.route for call, _ in kept)
        return abandoned

    def log(self, route: Route, request: ImageRequest, part: int) -> FlowLog:
        return FlowLog(self, route, request, part)

    async def close(self) -> list[Call]:
        """The run is over: calls it was to resume but never went back to are written to the
        ledger as abandoned (and returned); its other rows (a hedge that lost) go. A database
        that is away gets both once it is back."""
        unused = [call_id for call_id, _ in self._kept.values()]
        rest = list(self._live.difference(unused))
        self._kept.clear()
        self._live.clear()
        if not unused and not rest:
            return []
        try:
            return await asyncio.to_thread(self._journal.abandon, unused, rest)
        except DatabaseUnavailable:
            self._deferred.add(self._journal.abandon, unused, rest)
            return []

    def _take(self, route: Route, part: int, ordinal: int) -> tuple[str, UpstreamReply] | None:
        return self._kept.pop((route.id, part, ordinal), None)

    def _call(self, route: Route, request: ImageRequest, part: int, ordinal: int) -> Call:
        ticket, key_id, tenant = self._payer
        tier = request.geometry.tier
        return Call(f"{ticket}.{secrets.token_hex(6)}", ticket, route.id, part, ordinal,
                    route.provider.name, key_id, tenant, request.model, tier, request.n,
                    micros(route.price_per_image[tier] * request.n), int(time.time()))

    async def _begin(self, call: Call) -> None:
        """The call's row, written before it is sent. Cancelled meanwhile, the call is never
        sent: its row goes again once written (it is no spend)."""
        self._live.add(call.id)
        writing = asyncio.ensure_future(asyncio.to_thread(self._journal.begin, call))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            self._live.discard(call.id)
            writing.add_done_callback(lambda done: self._unsent(done, call.id))
            raise

    def _unsent(self, writing: asyncio.Future[None], call_id: str) -> None:
        if writing.cancelled() or writing.exception() is None:
            self._deferred.add(self._journal.drop, [call_id])

    async def _answered(self, call_id: str, reply: UpstreamReply) -> None:
        if len(reply.body) > MAX_KEPT_BYTES:
            return
        try:
            await asyncio.to_thread(self._journal.answer, call_id, _kept(reply))
        except DatabaseUnavailable as exc:
            # Polling goes on (sending it again would pay twice): only a crash before the
            # flow ends would have needed the reply, and then the call shows as abandoned.
            Failures("submit_journal").failed(exc)

    async def _ended(self, call_ids: list[str]) -> None:
        try:
            await asyncio.to_thread(self._journal.drop, call_ids)
        except DatabaseUnavailable:
            return  # still live: close() drops them, or has them dropped later
        self._live.difference_update(call_ids)


class FlowLog:
    """One flow's submits (flows.SubmitLog): one part of the request on one route."""

    def __init__(self, resume: Resume, route: Route, request: ImageRequest, part: int) -> None:
        self._resume = resume
        self._route = route
        self._request = request
        self._part = part
        self._ids: dict[int, str] = {}  # ordinal -> call id

    async def sending(self, ordinal: int) -> UpstreamReply | None:
        taken = self._resume._take(self._route, self._part, ordinal)
        if taken is not None:
            self._ids[ordinal] = taken[0]
            return taken[1]
        call = self._resume._call(self._route, self._request, self._part, ordinal)
        self._ids[ordinal] = call.id
        await self._resume._begin(call)
        return None

    async def answered(self, ordinal: int, reply: UpstreamReply) -> None:
        if (call_id := self._ids.get(ordinal)) is not None:
            await self._resume._answered(call_id, reply)

    async def ended(self) -> None:
        ids = list(self._ids.values())
        self._ids.clear()
        if ids:
            await self._resume._ended(ids)


def _kept(reply: UpstreamReply) -> Answer:
    headers = tuple((k, v) for k, v in reply.headers.multi_items() if k.lower() != "set-cookie")
    return Answer(reply.status, headers, reply.body)


def _reply(answer: Answer) -> UpstreamReply:
    return UpstreamReply(answer.status, httpx.Headers(list(answer.headers)), answer.body)
