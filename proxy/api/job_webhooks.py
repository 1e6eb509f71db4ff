"""Webhooks for finished jobs: Standard Webhooks, signed, retried with backoff, POSTed once.

`webhook-id` is the job id, `webhook-timestamp` the send time, and `webhook-signature`
`v1,<HMAC-SHA256>` over id, timestamp and body, with the job's key's own secret (read for
each attempt, so a rotation counts from the next one; within a rotation's grace period the
secret before it signs too, a second signature), or the fleet's for a key from before keys
had their own (proxy/billing/webhook_secrets.py).
Each attempt is claimed with a lease in the database before it is sent (Jobs.claim_webhooks),
so one process of a fleet POSTs it; a process that dies mid-attempt leaves its lease to run
out, and the attempt is claimed again. Each attempt is logged; after the last backoff step it
gives up.

Attempts are sent concurrently, each within its own deadline, and one key has at most
PER_KEY_SENDING of them in flight in the whole fleet (counted from their leases, in the claim:
a replica that dies holds its share only until they run out): a tenant's hanging receivers
hold only its own turns, never another tenant's webhook. Whatever one attempt raises is that
attempt's failure. The receiver's address is checked (proxy.egress) and pinned for the
connection: a name is resolved once, every address it has is checked, and the POST goes to
the checked one with the name kept as Host and TLS server name. Redirects are not followed.
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
from proxy.billing.webhook_secrets import KeySecrets, WebhookSecrets
from proxy.egress import Policy, Refused, Resolve, Resolver, Target, parse
from proxy.providers import webhooks
from proxy.supervise import Failures

log = logging.getLogger("switchyard.jobs")

WEBHOOK_BACKOFF_S = (5.0, 30.0, 120.0, 600.0, 1800.0)  # then give up
WEBHOOK_TIMEOUT_S = 10.0  # per connect, read and write
WEBHOOK_DEADLINE_S = 20.0  # for a whole attempt (name lookup included): a dripping receiver
# A claim's lease: an attempt starts as soon as it is claimed and ends within
# WEBHOOK_DEADLINE_S, so a live sender reports long before its lease runs out.
WEBHOOK_LEASE_S = 3 * WEBHOOK_DEADLINE_S
MAX_SENDING = 64  # attempts in flight in one process
PER_KEY_SENDING = 4  # one key's at most, in all the fleet's processes together


class Signer:
    """The secrets a key's webhooks are signed with: its own, else the fleet's `fleet`."""

    def __init__(self, fleet: str, keys: WebhookSecrets | None = None) -> None:
        self._fleet = fleet
        self._keys = keys

    def secrets(self, key_id: str) -> list[str]:
        """Synchronous (a database read): call it off the event loop."""
        found = self._keys.of_key(key_id) if self._keys is not None else None
        return (found or KeySecrets(None)).signing(self._fleet, time.time())

    def __repr__(self) -> str:
        return "Signer()"


class Webhooks:
    """The webhook sender of one process. `resolve` looks host names up (tests give their
    own); by default, on threads of its own."""

    def __init__(self, jobs: Jobs, signer: Signer, policy: Policy,
                 resolve: Resolve | None = None) -> None:
        self._jobs = jobs
        self._signer = signer
        self._policy = policy
        self._resolver: Resolver | None = None
        if resolve is None:
            resolve = self._resolver = Resolver(MAX_SENDING)  # a lookup for each attempt
        self._resolve = resolve
        # No connection is kept: each is pinned to one checked address for one host name.
        self._client = httpx.AsyncClient(
            timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False,
            limits=httpx.Limits(max_connections=MAX_SENDING, max_keepalive_connections=0))
        self._failures = Failures("webhooks")
        self._sending: dict[asyncio.Task[None], tuple[str, int]] = {}  # -> (job id, lease end)
        # Attempts sent whose outcome is not written yet: (job id, lease end) -> (delivered,
        # retry in s)
        self._unwritten: dict[tuple[str, int], tuple[bool, float | None]] = {}

    async def deliver_due(self) -> None:
        """Claim the attempts that are due, as far as there is room (in this process, and for
        each key in the fleet), and start sending them; returns without waiting for them."""
        room = MAX_SENDING - len(self._sending)
        if room <= 0:
            return
        until = int(self._jobs.clock() + WEBHOOK_LEASE_S)
        claimed = await asyncio.to_thread(self._jobs.claim_webhooks, until, room,
                                          PER_KEY_SENDING)
        for job in claimed:
            task = asyncio.create_task(self._attempt(job, until))
            self._sending[task] = (job.id, until)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)

    async def settle(self) -> None:
        """Wait for the attempts in flight (tests; a shutdown cancels them instead)."""
        await asyncio.gather(*self._sending, return_exceptions=True)

    def _return(self, stopped: list[tuple[str, int]]) -> None:
        """The stopped attempts' leases handed back; one that was sent (its outcome still
        being written) gets its outcome instead: handed back, it was sent again at once."""
        for job_id, until in stopped:
            outcome = self._unwritten.pop((job_id, until), None)
            with contextlib.suppress(Exception):  # the database away: the lease runs out
                if outcome is not None:
                    self._jobs.webhook_done(job_id, until, *outcome)
                else:
                    self._jobs.webhook_returned(job_id, until)

    async def _attempt(self, job: Job, until: int) -> None:
        """One attempt; if its outcome cannot be written before its lease runs out (the
        database stays away), that is logged and counted, and the attempt is claimed again
        then."""
        try:
            await self.deliver(job, until)
        except Exception as exc:
            self._failures.failed(exc)

    async def deliver(self, job: Job, until: int) -> None:
        """One attempt of a webhook claimed under the lease that ends `until`, and its
        outcome written: delivered, due again after its backoff, or given up (after the
        last step, or at once for a receiver Switchyard does not send to)."""
        attempt = job.webhook_attempts
        delivered, outcome, final = await self._send(job)
        retry = WEBHOOK_BACKOFF_S[attempt] if attempt < len(WEBHOOK_BACKOFF_S) and \
            not (delivered or final) else None
        log.info("webhook for job %s, attempt %d: %s", job.id, attempt + 1,
                 "delivered" if delivered else f"{outcome}, next in {retry}s" if retry
                 else f"{outcome}, giving up")
        self._unwritten[job.id, until] = delivered, retry
        try:  # cancelled (stopping), it stays: aclose writes it
            written = await self._outcome(job.id, until, delivered, retry)
        except Exception:
            self._unwritten.pop((job.id, until), None)
            raise
        self._unwritten.pop((job.id, until), None)
        if not written:
            log.warning("webhook for job %s: this attempt's outcome was not written: its "
                        "lease ran out first (the process that took it over writes its own), "
                        "or a first write whose answer was lost wrote it", job.id)

    async def _outcome(self, job_id: str, until: int, delivered: bool,
                       retry: float | None) -> bool:
        """webhook_done, tried again while the database is away and the lease lasts: an
        attempt whose outcome is never written is POSTed again once its lease runs out. (It
        is fenced by the lease: a write whose answer was lost, tried again, writes nothing.)
        Raises DatabaseUnavailable if the lease would end first."""
        while True:
            try:
                return await asyncio.to_thread(self._jobs.webhook_done, job_id, until,
                                               delivered, retry)
            except DatabaseUnavailable as exc:
                pause = self._failures.failed(exc)
                if self._jobs.clock() + pause >= until:
                    raise
                await asyncio.sleep(pause)

    async def _send(self, job: Job) -> tuple[bool, str, bool]:
        """(delivered, what happened, whether to give up now). Whatever the sending raises
        is this attempt's failure: a bug is logged and counted too."""
        try:
            async with asyncio.timeout(WEBHOOK_DEADLINE_S):
                status = await self._post(job, parse(job.callback_url))
        except Refused as exc:
            return False, f"refused: {exc}", True
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return False, f"failed ({type(exc).__name__})", False
        except Exception as exc:
            self._failures.failed(exc)
            return False, f"failed ({type(exc).__name__})", False
        self._failures.succeeded()
        return 200 <= status < 300, f"answered {status}", False

    async def _post(self, job: Job, target: Target) -> int:
        """POST the signed event to the receiver's checked address; its status (the body is
        not read: a receiver cannot make Switchyard hold its answer)."""
        address = await self._policy.pinned(target, self._resolve)
        secrets = await asyncio.to_thread(self._signer.secrets, job.key_id)
        body = orjson.dumps({"type": f"image.job.{job.state}", "data": describe(job)})
        stamp = int(time.time())
        headers = {"host": target.authority, "content-type": "application/json",
                   "webhook-id": job.id, "webhook-timestamp": str(stamp),
                   "webhook-signature": webhooks.sign_all(secrets, job.id, stamp, body)}
        url = httpx.URL(target.url).copy_with(host=str(address))
        sni = {"sni_hostname": target.host.removesuffix(".")} \
            if target.secure and target.address is None else {}
        async with self._client.stream("POST", url, content=body, headers=headers,
                                       extensions=sni) as answer:
            return answer.status_code

    async def aclose(self) -> None:
        """Cancel the attempts in flight and hand their leases back: they are due again at
        once, for any replica (left to run out, they held their keys' share of the fleet's
        bound for WEBHOOK_LEASE_S); one already sent gets its outcome written instead. If
        the database is away, the leases run out instead."""
        stopped = list(self._sending.values())
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        with contextlib.suppress(Exception):  # the database away too: the leases run out
            await asyncio.to_thread(self._return, stopped)
        await self._client.aclose()
        if self._resolver is not None:
            self._resolver.close()
