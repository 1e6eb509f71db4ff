"""Webhooks for finished jobs: Standard Webhooks, signed, retried with backoff, POSTed once.

`webhook-id` is the job id, `webhook-timestamp` the send time, and `webhook-signature`
`v1,<HMAC-SHA256>` over id, timestamp and body, with the fleet's one secret (proxy/shared.py).
Each attempt is claimed with a lease in the database before it is sent (Jobs.claim_webhooks),
so one process of a fleet POSTs it; a process that dies mid-attempt leaves its lease to run
out, and the attempt is claimed again. Each attempt is logged; after the last backoff step it
gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import orjson

from proxy.api.jobs import describe
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.jobs import Job, Jobs
from proxy.providers import webhooks
from proxy.supervise import Failures

log = logging.getLogger("switchyard.jobs")

WEBHOOK_BACKOFF_S = (5.0, 30.0, 120.0, 600.0, 1800.0)  # then give up
WEBHOOK_TIMEOUT_S = 10.0  # per connect, read and write
WEBHOOK_DEADLINE_S = 20.0  # for a whole attempt: a receiver that drips is cut off
# A claim's lease: the attempts of a round run at once, each within WEBHOOK_DEADLINE_S, so a
# live sender reports long before its lease runs out.
WEBHOOK_LEASE_S = 3 * WEBHOOK_DEADLINE_S
CLAIM_AT_ONCE = 20


class Webhooks:
    def __init__(self, jobs: Jobs, secret: str) -> None:
        self._jobs = jobs
        self._secret = secret
        self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False)
        self._failures = Failures("webhooks")

    async def deliver_due(self) -> None:
        """Claim the webhooks that are due and send them, all at once. One that breaks on a
        bug is logged and counted and the rest still go; a database outage ends the round
        (an attempt whose outcome was not written is claimed again when its lease runs out)."""
        until = int(time.time() + WEBHOOK_LEASE_S)
        claimed = await asyncio.to_thread(self._jobs.claim_webhooks, until, CLAIM_AT_ONCE)
        outcomes = await asyncio.gather(*(self.deliver(job, until) for job in claimed),
                                        return_exceptions=True)
        unavailable = None
        for outcome in outcomes:
            if isinstance(outcome, DatabaseUnavailable):
                unavailable = outcome
            elif isinstance(outcome, Exception):
                self._failures.failed(outcome)
        if unavailable is not None:
            raise unavailable

    async def deliver(self, job: Job, until: int) -> None:
        """One attempt of a webhook claimed under the lease that ends `until`."""
        body = orjson.dumps({"type": f"image.job.{job.state}", "data": describe(job)})
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": job.id,
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": webhooks.sign(self._secret, job.id, stamp, body)}
        delivered = False
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            assert job.callback_url is not None
            async with asyncio.timeout(WEBHOOK_DEADLINE_S):
                answer = await self._client.post(job.callback_url, content=body,
                                                 headers=headers)
            delivered = 200 <= answer.status_code < 300
        attempt = job.webhook_attempts
        retry = WEBHOOK_BACKOFF_S[attempt] if not delivered and \
            attempt < len(WEBHOOK_BACKOFF_S) else None
        log.info("webhook for job %s, attempt %d: %s", job.id, attempt + 1,
                 "delivered" if delivered else f"failed, next in {retry}s" if retry else
                 "failed, giving up")
        if not await asyncio.to_thread(self._jobs.webhook_done, job.id, until, delivered,
                                       retry):
            log.warning("webhook for job %s: its lease ran out before this attempt's outcome "
                        "was written; the process that took it over writes its own", job.id)

    async def aclose(self) -> None:
        await self._client.aclose()
