"""A queued request's upstream submits, written down as its flows make them (the journal in
proxy/billing/journal.py), so that its run after a crash resumes what the last run started.

A run first takes up what earlier runs left (`open`): a submit whose reply was kept is
answered from the journal when the flow makes it again, so the flow polls the upstream task
it already paid for, on the route that has it (the router tries those routes first); any
other call left is reported to the ledger as `abandoned`. A flow that fails drops its rows;
the rest stay until the job's outcome is stored, which drops the rows the run `accounted`
for and reports any other (a task the run never went back to) as abandoned. Only queued work
(jobs, batch items) pays these database writes: an interactive request has no Resume at all.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from proxy.billing.amounts import micros
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.deferred import Deferred
from proxy.billing.journal import Answer, Call, Journal
from proxy.catalog import Route
from proxy.domain import ImageRequest
from proxy.providers.base import UpstreamReply
from proxy.supervise import Failures

Run = Callable[..., Awaitable[Any]]  # (call, *args) -> its result, off the event loop (a thread)
# A reply bigger than this is not kept (a submit's reply that a flow goes on from is a task's
# id and status, a few hundred bytes): after a crash that call shows as abandoned.
MAX_KEPT_BYTES = 1024 * 1024


class Resume:
    """One run of one queued request (its `ticket`: the job id); implements flows.Submits."""

    def __init__(self, journal: Journal, deferred: Deferred, ticket: str,
                 left: bool = True, run: Run = asyncio.to_thread,
                 claim: str | None = None,
                 holds: Callable[[str, str], bool] | None = None) -> None:
        self._journal = journal
        self._deferred = deferred
        self._left = left  # whether earlier runs may have left calls (else nothing to read)
        self._run = run  # runs a journal call off the event loop
        self.claim = claim  # this run's claim of the job (Jobs.claim_many)
        self._holds = holds  # (job id, claim) -> whether that claim still holds the job
        self._payer = (ticket, "", "")  # (ticket, key id, tenant): who the calls are for
        # (route id, part, ordinal) -> (call id, its reply): submits to answer from the journal
        self._kept: dict[tuple[str, int, int], tuple[str, UpstreamReply]] = {}
        self._ours: set[str] = set()  # rows this run wrote or took up, and did not drop
        self.resumed: frozenset[str] = frozenset()

    async def ours(self) -> bool:
        """Whether the job is still this run's, to bill (the database away: as if it were,
        the settle then meets the same outage)."""
        if self._holds is None or self.claim is None:
            return True
        try:
            return bool(await self._run(self._holds, self._payer[0], self.claim))
        except DatabaseUnavailable:
            return True

    async def open(self, routes: Sequence[str], key_id: str, tenant: str) -> list[Call]:
        """Take up what earlier runs left: the calls with a kept reply on one of `routes` are
        to be resumed (`resumed` names their routes); the others are written to the ledger as
        abandoned, and returned."""
        self._payer = (self._payer[0], key_id, tenant)
        if not self._left:
            return []
        found: tuple[list[tuple[Call, Answer]], list[Call]] = await self._run(
            self._journal.recover, self._payer[0], routes)
        kept, abandoned = found
        self._kept = {(call.route, call.part, call.ordinal): (call.id, _reply(answer))
                      for call, answer in kept}
        self.resumed = frozenset(call.route for call, _ in kept)
        return abandoned

    def log(self, route: Route, request: ImageRequest, part: int) -> FlowLog:
        return FlowLog(self, route, request, part)

    def accounted(self) -> frozenset[str]:
        """The rows whose calls this run accounts for (in its ledger row, delivered or
        failed), for Jobs.finish to drop; a task taken up but never gone back to is not."""
        return frozenset(self._ours)

    def _take(self, route: Route, part: int, ordinal: int) -> tuple[str, UpstreamReply] | None:
        taken = self._kept.pop((route.id, part, ordinal), None)
        if taken is not None:
            self._ours.add(taken[0])
        return taken

    def _call(self, route: Route, request: ImageRequest, part: int, ordinal: int) -> Call:
        ticket, key_id, tenant = self._payer
        tier = request.geometry.tier
        return Call(f"{ticket}.{secrets.token_hex(6)}", ticket, route.id, part, ordinal,
                    route.provider.name, key_id, tenant, request.model, tier, request.n,
                    micros(route.quote(request)),
                    int(time.time()))

    async def _begin(self, call: Call) -> None:
        """The call's row, written before it is sent. Cancelled meanwhile, the call is never
        sent: its row goes again once written (it is no spend)."""
        self._ours.add(call.id)
        writing = asyncio.ensure_future(self._run(self._journal.begin, call))
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            writing.add_done_callback(lambda done: self._unsent(done, call.id))
            raise

    def _unsent(self, writing: asyncio.Future[None], call_id: str) -> None:
        if writing.cancelled() or writing.exception() is None:
            self._deferred.add(self._journal.drop, [call_id])

    async def _answered(self, call_id: str, reply: UpstreamReply) -> None:
        if len(reply.body) > MAX_KEPT_BYTES:
            return
        try:
            await self._run(self._journal.answer, call_id, _kept(reply))
        except DatabaseUnavailable as exc:
            # Polling goes on (sending it again would pay twice): only a crash before the
            # flow ends would have needed the reply, and then the call shows as abandoned.
            Failures("submit_journal").failed(exc)

    async def _failed(self, call_ids: list[str]) -> None:
        try:
            await self._run(self._journal.drop, call_ids)
        except DatabaseUnavailable:
            return  # still ours: the job's outcome drops them with it
        self._ours.difference_update(call_ids)


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

    async def failed(self) -> None:
        ids = list(self._ids.values())
        self._ids.clear()
        if ids:
            await self._resume._failed(ids)


def _kept(reply: UpstreamReply) -> Answer:
    headers = tuple((k, v) for k, v in reply.headers.multi_items() if k.lower() != "set-cookie")
    return Answer(reply.status, headers, bytes(reply.body))


def _reply(answer: Answer) -> UpstreamReply:
    return UpstreamReply(answer.status, httpx.Headers(list(answer.headers)), answer.body)
