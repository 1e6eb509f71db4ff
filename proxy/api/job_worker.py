"""The job worker: runs queued image jobs through the same charge path as synchronous
requests, and delivers signed webhooks for finished jobs, retrying with backoff.

Runs in every server process (claims are leased, so workers never share a job). A job whose
route is full or whose key hit its rate limit goes back to the queue for later; any other
outcome is final and kept. Webhooks are Standard Webhooks: `webhook-id` (the job id),
`webhook-timestamp`, `webhook-signature: v1,<HMAC-SHA256>` with the secret in the data
directory (`webhook-signing.key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import orjson

from proxy.api.batches import finalize
from proxy.api.errors import ApiError, render
from proxy.api.jobs import describe
from proxy.api.metering import Origin, charge
from proxy.api.openai_schema import from_json
from proxy.billing.jobs import Job
from proxy.providers import webhooks
from proxy.services import Services

log = logging.getLogger("switchyard.jobs")

IDLE_POLL_S = 0.25
MAX_ATTEMPTS = 5  # runs of one job that ended "try later" before that is its outcome
WAIT_CODES = frozenset({"rate_limit_exceeded", "upstream_rate_limited", "upstream_overloaded"})
WEBHOOK_BACKOFF_S = (5.0, 30.0, 120.0, 600.0, 1800.0)  # then give up
WEBHOOK_TIMEOUT_S = 10.0


class Worker:
    def __init__(self, svc: Services, secret: str, concurrency: int = 16) -> None:
        self._svc = svc
        self._secret = secret
        self._slots = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False)
        self._running: dict[asyncio.Task[None], Job] = {}

    async def run(self) -> None:
        """Claim and run jobs until cancelled; deliver due webhooks between claims."""
        lease = self._svc.config.request_timeout_s + 60
        try:
            while True:
                await self._slots.acquire()
                job = await self._claim(lease)
                if job is None:
                    self._slots.release()
                    await self._deliver_due()
                    await asyncio.to_thread(finalize, self._svc)
                    await asyncio.sleep(IDLE_POLL_S)
                    continue
                task = asyncio.create_task(self._run_one(job))
                self._running[task] = job
                task.add_done_callback(self._done)
        finally:
            await self._stop()

    async def _stop(self) -> None:
        """Cancel running jobs and hand each back to the queue before the store closes (a
        task cancelled before it started never ran its own hand-back)."""
        running = dict(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for task, job in running.items():
            if task.cancelled():
                await asyncio.to_thread(self._svc.store.jobs.retry_later, job.id, 0)
        await self._client.aclose()

    async def _claim(self, lease: float) -> Job | None:
        """A claim that a shutdown cannot strand: if we are cancelled while the database
        hands us a job, the job goes straight back to the queue."""
        jobs = self._svc.store.jobs
        claiming = asyncio.ensure_future(asyncio.to_thread(jobs.claim, lease))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            job = await claiming
            if job is not None:
                await asyncio.to_thread(jobs.retry_later, job.id, 0)
            raise

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slots.release()

    async def _run_one(self, job: Job) -> None:
        try:
            status, body, retry = await self._execute(job)
        except asyncio.CancelledError:
            # Shutting down: hand the job back now rather than when its lease runs out.
            await asyncio.shield(asyncio.to_thread(self._svc.store.jobs.retry_later, job.id, 0))
            raise
        jobs = self._svc.store.jobs
        if retry is not None:
            await asyncio.to_thread(jobs.retry_later, job.id, retry)
            return
        await asyncio.to_thread(jobs.finish, job.id, status, body)
        log.info("job %s finished: %s", job.id, status)

    async def _execute(self, job: Job) -> tuple[int, bytes, float | None]:
        """(status, body, None), or retry-after seconds when the job should wait its turn."""
        svc = self._svc
        try:
            key = await asyncio.to_thread(svc.store.get_key, job.key_id)
            if key is None or not key.active:
                raise ApiError(401, "the key that queued this job was revoked",
                               code="invalid_api_key")
            model, asked = from_json(svc, key, job.endpoint, orjson.loads(job.request))
            base = svc.config.public_base_url or f"http://{svc.config.host}:{svc.config.port}"
            response = await charge(Origin(job.id, base), svc, key, model, asked)
        except ApiError as error:
            return error.status, bytes(render(error).body), _later(error, job)
        return response.status_code, bytes(response.body), None

    async def _deliver_due(self) -> None:
        due = await asyncio.to_thread(self._svc.store.jobs.due_webhooks)
        for job in due:
            await self._deliver(job)

    async def _deliver(self, job: Job) -> None:
        body = orjson.dumps({"type": f"image.job.{job.state}", "data": describe(job)})
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": job.id,
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": webhooks.sign(self._secret, job.id, stamp, body)}
        delivered = False
        with contextlib.suppress(httpx.HTTPError):
            assert job.callback_url is not None
            answer = await self._client.post(job.callback_url, content=body, headers=headers)
            delivered = 200 <= answer.status_code < 300
        attempt = job.webhook_attempts
        retry = WEBHOOK_BACKOFF_S[attempt] if not delivered and \
            attempt < len(WEBHOOK_BACKOFF_S) else None
        log.info("webhook for job %s, attempt %d: %s", job.id, attempt + 1,
                 "delivered" if delivered else f"failed, next in {retry}s" if retry else
                 "failed, giving up")
        await asyncio.to_thread(self._svc.store.jobs.webhook_done, job.id, delivered, retry)


def _later(error: ApiError, job: Job) -> float | None:
    """Wait-your-turn errors (the key's rate limit; every route full or overloaded) send the
    job back to the queue, a few times; everything else is its outcome."""
    if job.attempts < MAX_ATTEMPTS and error.code in WAIT_CODES:
        return min(float(error.headers.get("retry-after", "1")), 60.0) * job.attempts
    return None
