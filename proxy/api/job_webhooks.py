"""Webhooks for finished jobs: Standard Webhooks, signed, retried with backoff.

`webhook-id` is the job id, `webhook-timestamp` the send time, and `webhook-signature`
`v1,<HMAC-SHA256>` over id, timestamp and body, with the secret in the data directory
(`webhook-signing.key`). Each attempt is logged; after the last backoff step it gives up.
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
WEBHOOK_TIMEOUT_S = 10.0


class Webhooks:
    def __init__(self, jobs: Jobs, secret: str) -> None:
        self._jobs = jobs
        self._secret = secret
        self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False)
        self._failures = Failures("webhooks")

    async def deliver_due(self) -> None:
        """Send the webhooks that are due. One that breaks on a bug is logged and counted
        and the rest still go; a database outage stops the round (the next one resumes)."""
        due = await asyncio.to_thread(self._jobs.due_webhooks)
        for job in due:
            try:
                await self.deliver(job)
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                self._failures.failed(exc)

    async def deliver(self, job: Job) -> None:
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
        await asyncio.to_thread(self._jobs.webhook_done, job.id, delivered, retry)

    async def aclose(self) -> None:
        await self._client.aclose()
