"""The job worker: the scheduler of queued image jobs (async requests and batch items).

Each job runs through the same charge path as a synchronous request, so it is quoted,
reserved against the key's budget when it is admitted, routed with failover, and billed once.
Runs in every server process (claims are leased, so workers never share a job). A job whose
key hit its own limits, or whose routes were all full, goes back to the queue without using
up an attempt; an overloaded host costs an attempt; any other outcome is final and kept.

Every loop here is supervised (proxy/supervise.py): claims, leases, webhooks and batches go on
after an error. A job that met a database outage goes back to the queue uncounted, and a job's
outcome waits in memory until the database takes it; a job that broke on a bug fails alone.

Each run of a job writes its upstream submits down (proxy/providers/resume.py): a run after a
crash polls the upstream tasks the last one started instead of paying for them again, and the
job's stored outcome settles what its runs left (calls no run could resume are `abandoned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from dataclasses import replace

import orjson

from proxy import supervise, tracing
from proxy.api.batches import finalize
from proxy.api.errors import ApiError, internal, render
from proxy.api.job_webhooks import Signer, Webhooks
from proxy.api.ledger import count_abandoned
from proxy.api.metering import charge
from proxy.api.openai_schema import from_json
from proxy.api.render import Origin
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.jobs import Job
from proxy.egress import Policy
from proxy.providers.resume import Resume
from proxy.services import Services

log = logging.getLogger("switchyard.jobs")

IDLE_POLL_S = 0.25
HOUSEKEEPING_S = 1.0  # webhooks due and batches to finalize are looked for this often
CLAIM_AT_ONCE = 64  # jobs claimed per database round trip
# Claimed items that may wait for a host's slot at once (capacity counts every live host, and
# not every item can use every host): enough to take the next free slot without a claim.
MAX_WAITING = 32
PLACING_S = 0.005  # how soon to look again while claimed items are on their way to a slot
MAX_ATTEMPTS = 5  # runs of one job that ended "try later" before that is its outcome
DB_RETRY_S = 1.0  # a job that met a database outage is claimed again after this
WAIT_CODES = frozenset({"rate_limit_exceeded", "upstream_rate_limited", "upstream_overloaded"})


class Worker:
    """Claims queued jobs while there is capacity to run them, and runs them concurrently.

    Capacity is the sum of the live hosts' `max_in_flight`: the router spreads each item to
    the best route with a free slot (a batch item never waits on a full route while another
    has room, and waits for a slot when all are full), so every host is kept busy and none
    is pushed past its limit. A tenant at its own concurrency limit, or resting after its
    rate limit, is skipped when claiming, and no more is claimed while MAX_WAITING items wait
    for a slot, so queued items wait in the queue, not in memory. Keys take turns at the queue
    (proxy/billing/fairness.py), and interactive requests (async jobs among them) come before
    batch items for a host's slots (proxy/routing/slots.py).
    """

    def __init__(self, svc: Services, secret: str, concurrency: int | None = None) -> None:
        self._svc = svc
        self._capacity = concurrency or capacity(svc)
        self._webhooks = Webhooks(svc.store.jobs, Signer(secret, svc.store.webhook_secrets),
                                  Policy(svc.config.callback_allow_cidrs))
        self._running: dict[asyncio.Task[None], Job] = {}
        self._per_key: Counter[str] = Counter()
        self._key_limit: dict[str, int | None] = {}  # the key's concurrency, as last read
        self._resting: dict[str, float] = {}  # key id -> monotonic time its rest ends
        self._batch_ends: dict[str, int] = {}  # batch id -> when its window closes (epoch s)
        self._freed = asyncio.Event()
        self._lease = svc.config.request_timeout_s + 60
        self._runs = supervise.Failures("job_runs")

    async def run(self) -> None:
        """Claim and run jobs until cancelled; webhooks, finished batches and leases are
        looked after alongside."""
        chores = [
            asyncio.create_task(supervise.forever("webhooks", self._webhooks.deliver_due,
                                                  HOUSEKEEPING_S)),
            asyncio.create_task(supervise.forever(
                "batch_finalize", lambda: asyncio.to_thread(finalize, self._svc),
                HOUSEKEEPING_S)),
            asyncio.create_task(supervise.forever("job_leases", self._renew_leases,
                                                  self._lease / 3))]
        try:
            await supervise.forever("job_claims", self._claim_and_start, 0.0)
        finally:
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            await self._stop()

    async def _claim_and_start(self) -> None:
        """Claim what there is room for and start it; then wait for room (or a while)."""
        room = await self._room()
        jobs = await self._claim(room) if room > 0 else []
        for job in jobs:
            self._start(job)
        if jobs and len(jobs) == room:
            return  # there may be more to claim
        if self._unplaced():
            await asyncio.sleep(PLACING_S)  # items on their way to a slot
            return
        # Nothing more to claim, or no room: wait for a job to end (or a while).
        self._freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), IDLE_POLL_S)

    async def _room(self) -> int:
        """How many jobs to claim now: within the worker's capacity and the slots free now
        (the fleet's, in fleet mode: other replicas' work holds slots too), and no more than
        keep MAX_WAITING items waiting for a slot (counting those on their way to one)."""
        router = self._svc.router
        ahead = router.waiting + self._unplaced()  # claimed, not in a slot yet
        return min(self._capacity - len(self._running), CLAIM_AT_ONCE, MAX_WAITING - ahead,
                   await router.free() - ahead)

    def _unplaced(self) -> int:
        """Running jobs neither in an attempt nor waiting for a slot yet (an estimate:
        interactive requests hold slots too, which makes it low, never high)."""
        router = self._svc.router
        return max(0, len(self._running) - router.held - router.waiting)

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_one(job))
        self._running[task] = job
        self._per_key[job.key_id] += 1
        task.add_done_callback(self._done)

    def _skipped_keys(self) -> list[str]:
        """Keys whose jobs are not to be claimed now: at their concurrency, or resting."""
        now = time.monotonic()
        for key_id in [k for k, until in self._resting.items() if until <= now]:
            del self._resting[key_id]
        full = [k for k, n in self._per_key.items()
                if (limit := self._key_limit.get(k)) is not None and n >= limit]
        return [*full, *self._resting]

    async def _renew_leases(self) -> None:
        """A job at a deferred host runs for hours; its lease is kept fresh while this
        process lives, so only a crashed worker's jobs are claimed again."""
        claims = [(job.id, job.claim) for job in self._running.values() if job.claim]
        if claims:
            await asyncio.to_thread(self._svc.store.jobs.renew, claims, self._lease)

    async def _stop(self) -> None:
        """Cancel running jobs and hand each back to the queue before the store closes (a
        task cancelled before it started never ran its own hand-back)."""
        running = dict(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for task, job in running.items():
            if task.cancelled():
                # A database that is away leaves the job's lease to run out instead.
                with contextlib.suppress(DatabaseUnavailable):
                    await asyncio.to_thread(self._svc.store.jobs.retry_later, job.id, 0, False,
                                            job.claim)
        await self._webhooks.aclose()

    async def _claim(self, limit: int) -> list[Job]:
        """A claim that a shutdown cannot strand: if we are cancelled while the database
        hands us jobs, they go straight back to the queue."""
        jobs = self._svc.store.jobs
        claiming = asyncio.ensure_future(asyncio.to_thread(
            jobs.claim_many, self._lease, limit, self._skipped_keys()))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(DatabaseUnavailable):  # else their leases run out
                for job in await claiming:
                    await asyncio.to_thread(jobs.retry_later, job.id, 0, False, job.claim)
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        job = self._running.pop(task, None)
        if job is not None:
            self._per_key[job.key_id] -= 1
            if not self._per_key[job.key_id]:
                del self._per_key[job.key_id]
        self._freed.set()

    async def _run_one(self, job: Job) -> None:
        store = self._svc.store
        resume = Resume(store.journal, store.deferred, job.id, left=job.calls_left,
                        run=self._svc.ledger_writes.run, claim=job.claim,
                        holds=functools.partial(store.jobs.holds, lease_s=self._lease))
        try:
            status, body, retry = await self._execute(job, resume)
        except asyncio.CancelledError:
            # Shutting down: hand the job back now rather than when its lease runs out.
            with contextlib.suppress(DatabaseUnavailable):
                await asyncio.shield(asyncio.to_thread(
                    self._svc.store.jobs.retry_later, job.id, 0, False, job.claim))
            raise
        except DatabaseUnavailable as exc:
            # Not the job's fault: back to the queue, uncounted, once the database answers.
            self._runs.failed(exc)
            status, body, retry = 503, b"", (DB_RETRY_S, False)
        except Exception as exc:
            # A bug fails this job alone, as the 500 a synchronous request would get.
            self._runs.failed(exc)
            status, body, retry = 500, bytes(render(internal(exc)).body), None
        else:
            self._runs.succeeded()
        await self._record(job, (status, body), retry, resume)

    async def _record(self, job: Job, outcome: tuple[int, bytes],
                      retry: tuple[float, bool] | None, resume: Resume) -> None:
        """The job's outcome, or its return to the queue, written once the database takes
        it (the outcome waits here meanwhile, so a finished job is not run again). The
        outcome settles the journal of the job's upstream calls with it: back in the queue,
        the job's next run takes them up. Both hold only while the job is this run's claim:
        a write tried again after its first commit's answer was lost finds it written."""
        jobs = self._svc.store.jobs
        while True:
            try:
                if retry is not None:
                    await asyncio.to_thread(jobs.retry_later, job.id, *retry, job.claim)
                    return
                abandoned = await asyncio.to_thread(jobs.finish, job.id, *outcome,
                                                    resume.accounted(), job.claim)
                break
            except DatabaseUnavailable as exc:
                await asyncio.sleep(self._runs.failed(exc))
        if abandoned is None:  # written already, or the job is another run's now
            log.info("job %s: nothing more written (its outcome was, by a first write whose "
                     "answer was lost, or another run holds the job now)", job.id)
            return
        count_abandoned(self._svc, abandoned)
        log.info("job %s finished: %s", job.id, outcome[0])

    async def _execute(self, job: Job, resume: Resume
                       ) -> tuple[int, bytes, tuple[float, bool] | None]:
        """(status, body, None), or (seconds, counted) when the job should wait its turn."""
        svc = self._svc
        try:
            key = await asyncio.to_thread(svc.store.get_key, job.key_id)
            if key is None or not key.active:
                raise ApiError(401, "the key that queued this job was revoked",
                               code="invalid_api_key")
            self._key_limit[key.id] = key.limits.concurrency
            model, asked = from_json(svc, key, job.endpoint, orjson.loads(job.request))
            asked = replace(asked, ticket=job.id,
                            patience_s=await self._patience(job) if job.batch_id else None)
            base = svc.config.public_base_url or f"http://{svc.config.host}:{svc.config.port}"
            with tracing.job(job.traceparent, job.id, job.batch_id):
                response = await charge(Origin(job.id, base), svc, key, model, asked,
                                        resume=resume)
        except ApiError as error:
            later = _later(error, job)
            if later is not None and error.code == "rate_limit_exceeded":
                self._resting[job.key_id] = time.monotonic() + later[0]
            return error.status, bytes(render(error).body), later
        return response.status_code, bytes(response.body), None

    async def _patience(self, job: Job) -> float:
        """A batch item may wait for the rest of its batch's completion window."""
        assert job.batch_id is not None
        ends = self._batch_ends.get(job.batch_id)
        if ends is None:
            batch = await asyncio.to_thread(self._svc.store.batches.get, job.batch_id)
            ends = self._batch_ends[job.batch_id] = batch.expires_at if batch else 0
        left = ends - self._svc.store.jobs.clock()  # the database's, as `stage` wrote it
        if left <= 0:
            raise ApiError(408, "the batch's completion window ended before this request "
                                "could run", code="batch_expired")
        return left

def capacity(svc: Services) -> int:
    """How many jobs may run at once: every live host's in-flight limit (this process's
    share of it; the whole of it in fleet mode, where free slots bound the claims), added
    up."""
    return max(1, svc.router.capacity)


def _later(error: ApiError, job: Job) -> tuple[float, bool] | None:
    """Wait-your-turn errors send the job back to the queue: (after seconds, counted as an
    attempt). The key's own limits and every route being full are not the job's fault and
    do not count; an overloaded or rate-limiting host does, a few times. Everything else is
    the job's outcome."""
    after = min(float(error.headers.get("retry-after", "1")), 60.0)
    every_route_full = error.code == "upstream_overloaded" and \
        error.headers.get("x-switchyard-attempts") == "0"
    if error.code == "rate_limit_exceeded" or every_route_full:
        return after, False
    if job.attempts < MAX_ATTEMPTS and error.code in WAIT_CODES:
        return after * job.attempts, True
    return None
