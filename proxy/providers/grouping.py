"""Gathers requests bound for a deferred host (a batch API) into shared upstream jobs.

A batch API's discount comes per job, its limits count jobs, and one poll loop can serve a
whole job: so requests for the same route that arrive within `gather_s` (route option) of the
first, up to the protocol's member and byte limits, go up as one job. Each member remembers
the job's name in the queue (a `Refs`), so a member re-claimed after a crash waits for the job
it is already in instead of being submitted, and paid for, twice. The job's label is
remembered before its create is sent: a member whose process died before the create's reply
came back (so it never learnt the name) finds the job by its label upstream. Each member
stops waiting at its own deadline; the shared poll loop ends when the job does (or at the
latest deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.base import Grouping, Steps
from proxy.supervise import Failures

GATHER_S = 5.0  # how long a group stays open for more members, unless the route says
LABEL = "switchyard-group-"  # + a random part: a job's label upstream (Gemini's displayName)
SENDING = "sending:"  # a ref that is SENDING + label: the job's create may be under way

Drive = Callable[[Steps, Route, httpx.AsyncClient, float], Awaitable[Any]]


class Refs(Protocol):
    """Where members remember their upstream job (the jobs table): its name, or SENDING + its
    label until the name is known. Synchronous, run in a thread."""

    def remember(self, tickets: list[str], name: str) -> None: ...

    def recall(self, ticket: str) -> str | None: ...

    def forget(self, ticket: str, name: str) -> None:
        """The member is in no upstream job, if `name` is still the one it remembers."""


@dataclass
class _Open:
    """A group still taking members: their parts, and the job's name once it is sent."""

    route: Route
    client: httpx.AsyncClient
    deadline: float
    tickets: list[str] = field(default_factory=list)
    parts: list[Any] = field(default_factory=list)
    size: int = 0
    named: asyncio.Future[str] | None = None
    closer: asyncio.TimerHandle | None = None


class Groups:
    """The open groups per route and the poll loops per upstream job, for one process."""

    def __init__(self, drive: Drive, refs: Refs | None = None) -> None:
        self._drive = drive
        self._refs = refs
        self._open: dict[str, _Open] = {}
        self._waits: dict[str, asyncio.Task[Any]] = {}
        self._deadlines: dict[str, float] = {}  # job name -> its members' latest deadline
        self._finds: dict[str, asyncio.Task[Any]] = {}  # label -> the lookup of its job
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failures = Failures("batch_gather")

    async def generate(self, grouping: Grouping, route: Route, request: ImageRequest,
                       client: httpx.AsyncClient, deadline: float) -> ImageResult:
        """One member's images: join (or rejoin) a group, wait for its job, read the answer."""
        ticket = request.ticket or "t" + secrets.token_hex(8)
        name = None
        if request.ticket and self._refs is not None:
            name = await self._recall(grouping, route, request, client, deadline)
        if name is None:
            part, size = grouping.prepare(ticket, request, route)
            name = await asyncio.shield(self._join(grouping, route, client, deadline, ticket,
                                                   part, size))
        waiting = self._waits.get(name)
        if waiting is None:
            # The poll loop runs to the latest deadline of the job's members, not the first's.
            loop = asyncio.get_running_loop()
            until = max(deadline, self._deadlines.get(name, deadline))
            patient = replace(request, patience_s=max(0.0, until - loop.time()))
            waiting = self._waits[name] = self._spawn(self._drive(
                grouping.wait(name, patient, route), route, client, until))
            waiting.add_done_callback(lambda _: self._forget(name, waiting))
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            ended = await asyncio.wait_for(asyncio.shield(waiting), max(0.0, remaining))
        except TimeoutError:
            raise UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached")) from None
        try:
            return grouping.answer(ended, ticket, request)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            failure = UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply was malformed"))
        except UpstreamError as exc:
            failure = exc
        # The job has ended without this member's answer (a batch that failed, expired or was
        # cancelled): a retry of it must join a new job, not wait for this one again.
        if request.ticket and self._refs is not None:
            try:
                await asyncio.to_thread(self._refs.forget, ticket, name)
            except Exception as exc:
                self._failures.failed(exc)
        raise failure

    async def _recall(self, grouping: Grouping, route: Route, request: ImageRequest,
                      client: httpx.AsyncClient, deadline: float) -> str | None:
        """The job this member is already in: the name it remembered, or the job its label
        finds upstream (one lookup per label, whoever asks); None if it is in none."""
        assert self._refs is not None and request.ticket is not None
        ticket = request.ticket
        ref = await asyncio.to_thread(self._refs.recall, ticket)
        if ref is None or not ref.startswith(SENDING):
            return ref
        label = ref.removeprefix(SENDING)
        finding = self._finds.get(label)
        if finding is None:
            finding = self._finds[label] = self._spawn(self._drive(
                grouping.find(label, request, route), route, client, deadline))
            finding.add_done_callback(lambda _: self._finds.pop(label, None))
        name: str | None = await asyncio.shield(finding)
        if name is not None:
            await self._remember([ticket], name)
        return name

    def _join(self, grouping: Grouping, route: Route, client: httpx.AsyncClient,
              deadline: float, ticket: str, part: Any, size: int) -> asyncio.Future[str]:
        group = self._open.get(route.id)
        if group is not None and (len(group.parts) >= grouping.max_members
                                  or group.size + size > grouping.max_bytes):
            self._close(grouping, group)
            group = None
        if group is None:
            loop = asyncio.get_running_loop()
            group = self._open[route.id] = _Open(route, client, deadline,
                                                 named=loop.create_future())
            gather = float({**route.provider.options, **route.options}.get("gather_s",
                                                                             GATHER_S))
            group.closer = loop.call_later(gather, self._close, grouping, group)
        group.tickets.append(ticket)
        group.parts.append(part)
        group.size += size
        group.deadline = max(group.deadline, deadline)
        assert group.named is not None
        named = group.named
        if len(group.parts) >= grouping.max_members:
            self._close(grouping, group)
        return named

    def _close(self, grouping: Grouping, group: _Open) -> None:
        """Stop taking members and send the job."""
        if self._open.get(group.route.id) is group:
            del self._open[group.route.id]
        if group.closer is not None:
            group.closer.cancel()
            group.closer = None
        self._spawn(self._send(grouping, group))

    async def _send(self, grouping: Grouping, group: _Open) -> None:
        assert group.named is not None
        label = LABEL + secrets.token_hex(8)
        try:
            if self._refs is not None:
                # Before the create: a crash before its reply leaves the label to find the
                # job by. A database that is away sends nothing (the members go back later).
                await asyncio.to_thread(self._refs.remember, group.tickets, SENDING + label)
            name = await self._drive(grouping.submit(group.parts, label, group.route),
                                     group.route, group.client, group.deadline)
            self._deadlines[name] = group.deadline
            if self._refs is not None:
                await self._remember(group.tickets, name)
        except BaseException as exc:  # every member hears why (cancelled at shutdown too)
            if not group.named.done():
                if isinstance(exc, UpstreamError):  # one failed create, however many hear it
                    told: Exception = UpstreamError(replace(exc.failure, shared=label))
                elif isinstance(exc, Exception):
                    told = exc
                else:
                    told = UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "shutting down"))
                group.named.set_exception(told)
                group.named.exception()  # retrieved: members may all have gone
            if not isinstance(exc, Exception):
                raise
            return
        group.named.set_result(name)

    async def _remember(self, tickets: list[str], name: str) -> None:
        """The members' upstream job, in the queue. If the database is away the members
        still wait for it here (sending it again would pay twice); only a restart before
        they finish would forget it."""
        assert self._refs is not None
        try:
            await asyncio.to_thread(self._refs.remember, tickets, name)
        except Exception as exc:
            self._failures.failed(exc)

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """A poll loop nobody awaits any more still ends cleanly: an upstream's failure is
        its members' outcome, not an error; anything else is logged and counted."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, UpstreamError):
            self._failures.failed(exc)

    def _forget(self, name: str, task: asyncio.Task[Any]) -> None:
        """A finished poll loop is dropped: a member that comes later polls once more."""
        if self._waits.get(name) is task:
            del self._waits[name]
            self._deadlines.pop(name, None)

    async def aclose(self) -> None:
        """Stop every open group and poll loop (shutdown): members are handed back to the
        queue by the worker and resume from what they remembered."""
        for group in list(self._open.values()):
            if group.closer is not None:
                group.closer.cancel()
            if group.named is not None and not group.named.done():
                group.named.cancel()
        self._open.clear()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
