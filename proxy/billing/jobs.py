"""The durable job queue: asynchronous image requests, in the billing database.

A job is claimed with a lease; a worker that dies leaves its lease to run out and the job is
claimed again, so nothing is lost across restarts. A finished job keeps its response (status
and body) and is never run again; its ledger row is keyed by the job id, so a job that did run
twice (its worker died after the upstream answered) is still billed once.

Each claim gets a token of its own (`Job.claim`), and a run's later writes (its outcome, its
return to the queue, its lease renewals) hold only while the job is still that claim's: a run
whose lease ran out while it went on (cut off from the database, stalled) cannot overwrite the
outcome of the run that took the job over, nor hand that run's job back to the queue; and an
outcome written again after its first commit's answer was lost (a connection that broke)
changes nothing, where it re-armed a webhook already delivered.

Leases and due times are the database's clock (Database.clock): one replica writes them,
another compares them with its now, and replicas' own clocks may disagree.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from proxy import ids
from proxy.billing import journal
from proxy.billing.db import Cursor, Database, retry_lost
from proxy.billing.fairness import due_in_turn
from proxy.billing.journal import Call
from proxy.billing.queue_cap import make_room
from proxy.billing.rows import JOB_PREFIX

STATES = ("queued", "processing", "succeeded", "failed")


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    key_id: str
    endpoint: str  # "generations" | "edits"
    request: bytes  # the request body as JSON
    state: str
    attempts: int
    status: int | None = None
    response: bytes | None = None
    callback_url: str | None = None
    created_at: int = 0
    finished_at: int | None = None
    webhook_attempts: int = 0
    batch_id: str | None = None
    # Earlier runs left upstream calls in the journal (proxy/billing/journal.py) to take up.
    calls_left: bool = False
    traceparent: str | None = None  # the trace of the request that queued it (tracing on)
    claim: str | None = None  # the claim's token, while a run holds the job


_COLUMNS = ("id, key_id, endpoint, request, state, attempts, status, response, callback_url, "
            "created_at, finished_at, webhook_attempts, batch_id, "
            "EXISTS (SELECT 1 FROM upstream_calls WHERE ticket = jobs.id), traceparent, "
            "claim_token")
# A webhook attempt that is due, or whose sender's lease ran out.
_HOOK_DUE = "webhook_state IN ('due', 'sending') AND webhook_after <= ?"
_RUNNABLE = ("((state = 'queued' AND run_after <= ?) OR "
             "(state = 'processing' AND lease_until < ?))")
# A queued item of a batch being cancelled is not claimed if it has nothing to take up
# (journal.UNSTARTED): the cancel ends such items in steps (batches.py). One with an upstream
# task to poll, or one whose process died running it, runs again, as before a cancel.
_NOT_CANCELLED = ("(batch_id IS NULL OR state = 'processing' OR NOT EXISTS (SELECT 1 FROM "
                  "batches WHERE batches.id = jobs.batch_id AND batches.status = 'cancelling') "
                  f"OR NOT {journal.UNSTARTED})")


def _job(row: tuple[Any, ...]) -> Job:
    (job_id, key_id, endpoint, request, state, attempts, status, response, callback, created,
     finished, hooks, batch_id, calls_left, traceparent, claim) = row
    return Job(job_id, key_id, endpoint, bytes(request), state, int(attempts),
               int(status) if status is not None else None,
               bytes(response) if response is not None else None, callback or None,
               int(created), int(finished) if finished is not None else None, int(hooks),
               batch_id or None, bool(calls_left), traceparent or None, claim or None)


class Jobs:
    def __init__(self, db: Database) -> None:
        self._db = db

    def clock(self) -> float:
        """Now on the clock the leases are written in (no I/O: any thread may ask)."""
        return self._db.clock()

    def enqueue(self, key_id: str, endpoint: str, request: bytes,
                callback_url: str | None = None, into: Cursor | None = None,
                most: int | None = None, traceparent: str | None = None) -> Job:
        """A new queued job; written in the transaction `into` if given (an
        Idempotency-Key's: proxy/billing/idempotency.py). With `most`, QueueFull instead if
        the key has that many unfinished jobs and batch items already (queue_cap.py)."""
        job = self.new(key_id, endpoint, request, callback_url, traceparent)
        if into is not None:
            return self._insert(into, job, most)
        return retry_lost(lambda: self.queue(job, most))

    def new(self, key_id: str, endpoint: str, request: bytes, callback_url: str | None = None,
            traceparent: str | None = None) -> Job:
        """A job to `queue`, not written yet."""
        now = int(self._db.clock())
        return Job(ids.ordered(JOB_PREFIX), key_id, endpoint, request, "queued", 0,
                   callback_url=callback_url, created_at=now, traceparent=traceparent)

    def queue(self, job: Job, most: int | None = None) -> Job:
        """Write `job` (from `new`) queued, if an earlier try has not: a commit whose answer
        was lost (a connection cut at that instant) is found, not taken for a failure, or the
        client told 503 would send it again and both would run and be billed
        (db.until_known tries again)."""
        with self._db.transaction() as cur:
            if cur.query("SELECT 1 FROM jobs WHERE id = ?", (job.id,)):
                return job  # an earlier try's commit, whose answer was lost
            return self._insert(cur, job, most)

    def _insert(self, cur: Cursor, job: Job, most: int | None) -> Job:
        make_room(cur, self._db.engine, job.key_id, 1, most)
        cur.execute(
            "INSERT INTO jobs (id, key_id, endpoint, request, state, run_after, callback_url, "
            "created_at, traceparent) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
            (job.id, job.key_id, job.endpoint, job.request, job.created_at, job.callback_url,
             job.created_at, job.traceparent))
        return job

    def claim(self, lease_s: float, now: float | None = None) -> Job | None:
        """The next runnable job, now leased to the caller; None if there is none."""
        claimed = self.claim_many(lease_s, 1, now=now)
        return claimed[0] if claimed else None

    def claim_many(self, lease_s: float, limit: int, skip_keys: Collection[str] = (),
                   now: float | None = None) -> list[Job]:
        """Up to `limit` runnable jobs (queued and due, or processing with its lease run out),
        none of `skip_keys` (tenants at their own limits), keys taking turns (fairness.py),
        leased to the caller.

        Safe across processes: each UPDATE re-checks that its job is still runnable, so two
        claimers never get the same job; one transaction keeps a claim of many cheap."""
        now_s = int(self._db.clock() if now is None else now)
        ids = due_in_turn(self._db, now_s, limit, frozenset(skip_keys))
        won: list[str] = []
        if ids:
            with self._db.transaction() as cur:
                for job_id in ids:
                    if cur.execute(f"UPDATE jobs SET state = 'processing', lease_until = ?, "
                                   f"attempts = attempts + 1, claim_token = ? WHERE id = ? "
                                   f"AND {_RUNNABLE} AND {_NOT_CANCELLED}",
                                   (now_s + int(lease_s), secrets.token_hex(8), job_id,
                                    now_s, now_s)) == 1:
                        won.append(job_id)
        return [job for job in map(self.get, won) if job is not None]

    def renew(self, claims: Collection[tuple[str, str]], lease_s: float) -> None:
        """Extend the leases of jobs still running here, each (job id, claim token) (a batch
        item at a deferred host runs for hours): only a worker that died lets its jobs'
        leases run out. A job another claim holds now is left alone."""
        pairs = list(claims)
        for start in range(0, len(pairs), 200):
            chunk = pairs[start:start + 200]
            self._db.execute(f"UPDATE jobs SET lease_until = ? WHERE state = 'processing' AND "
                             f"({' OR '.join(['(id = ? AND claim_token = ?)'] * len(chunk))})",
                             (int(self._db.clock() + lease_s),
                              *[x for pair in chunk for x in pair]))

    def holds(self, job_id: str, claim: str, lease_s: float) -> bool:
        """Whether the job is still this claim's, its lease renewed if so. A run asks before
        it settles its ledger row (proxy/api/ledger.py): one whose lease ran out while it
        went on (cut off from the database, stalled) must not bill for a job whose outcome
        the run that took it over writes; and the renewal keeps it the claim's until its
        outcome is written, a moment later."""
        return self._db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND "
                                "claim_token = ? AND state = 'processing'",
                                (int(self._db.clock() + lease_s), job_id, claim)) == 1

    def finish(self, job_id: str, status: int, response: bytes,
               accounted: Collection[str] = (), claim: str | None = None) -> list[Call] | None:
        """The job's outcome (a success or a final error), kept for GET and the webhook. Its
        ledger row (keyed by the job id) is marked delivered in the same transaction: a
        stored result is as good as a response on the wire. So are its upstream calls'
        journal rows settled: those its last run `accounted` for go, any other is written to
        the ledger as abandoned (a crash cut it off and no run took it up); those calls.

        With the run's `claim`, only while the job is still that claim's: None if it is not
        (finished already, or claimed again after its lease ran out), and nothing written
        but the end of the journal rows this run `accounted` for. Without one (tests,
        tools) it is written whatever holds the job."""
        succeeded = 200 <= status < 300
        now = int(self._db.clock())
        fence, fenced = ("AND state = 'processing' AND claim_token = ?", (claim,)) \
            if claim is not None else ("", ())
        with self._db.transaction() as cur:
            if not cur.execute(
                    "UPDATE jobs SET state = ?, status = ?, response = ?, lease_until = NULL, "
                    "claim_token = NULL, finished_at = ?, webhook_state = CASE WHEN "
                    "callback_url IS NULL THEN NULL ELSE 'due' END, webhook_after = ? "
                    f"WHERE id = ? {fence}",
                    ("succeeded" if succeeded else "failed", status, response, now, now,
                     job_id, *fenced)) and claim is not None:
                journal.drop(cur, accounted)  # this run's, in the ledger: no one else's to settle
                return None
            abandoned = journal.settle(cur, "?", (job_id,), accounted)
            if succeeded:
                cur.execute("UPDATE ledger SET delivered_at = ? WHERE request_id = ?",
                            (now, job_id))
        return abandoned

    def retry_later(self, job_id: str, seconds: float, counted: bool = True,
                    claim: str | None = None) -> bool:
        """Back to the queue (every route full, the key's rate limit, or a shutdown): run
        again later. Only a job still running goes back: a finished one stays finished; with
        the run's `claim`, only while the job is that claim's (one claimed again after its
        lease ran out runs on). A run that never reached a host (its turn simply had not
        come) is not `counted` as an attempt. False if nothing went back."""
        fence, fenced = (" AND claim_token = ?", (claim,)) if claim is not None else ("", ())
        return self._db.execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL, claim_token = NULL, "
            "run_after = ?, attempts = attempts - ? WHERE id = ? AND state = 'processing'"
            + fence, (int(self._db.clock() + seconds), 0 if counted else 1, job_id, *fenced)) == 1

    def remember(self, job_ids: list[str], upstream_ref: str) -> None:
        """The upstream job (a batch API's batch) these jobs were sent in: a job re-claimed
        after a crash waits for it instead of being sent, and paid for, again."""
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            self._db.execute(f"UPDATE jobs SET upstream_ref = ? WHERE id IN "
                             f"({', '.join('?' * len(chunk))})", (upstream_ref, *chunk))

    def recall(self, job_id: str) -> str | None:
        rows = self._db.query("SELECT upstream_ref FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def forget(self, job_id: str, upstream_ref: str) -> None:
        """The job is in no upstream job any more (`upstream_ref` ended without its answer),
        unless it has been sent in another since."""
        self._db.execute("UPDATE jobs SET upstream_ref = NULL WHERE id = ? AND upstream_ref = ?",
                         (job_id, upstream_ref))

    def get(self, job_id: str, key_id: str | None = None) -> Job | None:
        """A job by id; with `key_id`, only that key's (a key never sees another's jobs)."""
        where, args = ("id = ? AND key_id = ?", (job_id, key_id)) if key_id else \
            ("id = ?", (job_id,))
        rows = self._db.query(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", args)
        return _job(rows[0]) if rows else None

    def claim_webhooks(self, until: int, limit: int = 20, per_key: int | None = None,
                       now: float | None = None) -> list[Job]:
        """Up to `limit` jobs whose webhook attempt is due, leased to the caller until `until`
        (epoch s), so one process of a fleet POSTs it. While an attempt is `sending`, its
        webhook_after is the lease's end: a sender that died leaves it to run out and the
        attempt is due again. Safe across processes as claim_many is: each UPDATE re-checks
        that its attempt is still due (PostgreSQL re-reads a row another claim just changed).

        With `per_key`, no key has more than that many attempts in flight in the whole fleet:
        those `sending` under a lease not yet run out, counted in the claim's transaction with
        the key's other claims shut out (SQLite's write lock; on PostgreSQL a lock on the
        key's row, as queue_cap.py takes). A key with many due webhooks cannot crowd out the
        others, whose turns come in the same claim; a replica that dies holds its turns only
        until their leases run out."""
        now_s = int(self._db.clock() if now is None else now)
        bound = per_key or limit
        full = [key for key, n in _in_flight(self._db, now_s).items() if n >= bound] \
            if per_key is not None else []
        unfull = f" AND key_id NOT IN ({', '.join('?' * len(full))})" if full else ""
        rows = self._db.query(
            f"SELECT id, key_id FROM (SELECT id, key_id, webhook_after, ROW_NUMBER() OVER "
            f"(PARTITION BY key_id ORDER BY webhook_after, id) AS turn FROM jobs "
            f"WHERE {_HOOK_DUE}{unfull}) AS due WHERE turn <= ? ORDER BY turn, webhook_after "
            f"LIMIT ?", (now_s, *full, bound, limit))
        won: list[str] = []
        if rows:
            with self._db.transaction() as cur:
                keys = sorted({key_id for _, key_id in rows})
                if per_key is not None and self._db.engine == "postgres":
                    for key_id in keys:  # in one order everywhere: no deadlock between claims
                        cur.query("SELECT id FROM api_keys WHERE id = ? FOR UPDATE", (key_id,))
                busy = _in_flight(cur, now_s, keys) if per_key is not None else {}
                room = {key_id: bound - busy.get(key_id, 0) for key_id in keys}
                for job_id, key_id in rows:
                    if room[key_id] > 0 and cur.execute(
                            f"UPDATE jobs SET webhook_state = 'sending', webhook_after = ? "
                            f"WHERE id = ? AND {_HOOK_DUE}", (until, job_id, now_s)) == 1:
                        room[key_id] -= 1
                        won.append(job_id)
        return [job for job in map(self.get, won) if job is not None]

    def webhook_done(self, job_id: str, until: int, delivered: bool,
                     retry_in_s: float | None) -> bool:
        """After one attempt under the lease that ends `until`: delivered, due again later,
        or given up. False, and nothing written, if that lease was lost meanwhile (it ran out
        and another process claimed the attempt: its outcome is that one's to write)."""
        state = "delivered" if delivered else ("due" if retry_in_s is not None else "gave_up")
        return self._db.execute(
            "UPDATE jobs SET webhook_state = ?, webhook_attempts = webhook_attempts + 1, "
            "webhook_after = ? WHERE id = ? AND webhook_state = 'sending' AND webhook_after = ?",
            (state, int(self._db.clock() + (retry_in_s or 0)), job_id, until)) == 1

    def webhook_returned(self, job_id: str, until: int) -> bool:
        """An attempt under the lease that ends `until` stopped unfinished (the process is
        shutting down): due again now, for any process, without counting as an attempt. The
        lease would hold the key's share of the fleet's bound until it ran out."""
        return self._db.execute(
            "UPDATE jobs SET webhook_state = 'due', webhook_after = ? WHERE id = ? AND "
            "webhook_state = 'sending' AND webhook_after = ?",
            (int(self._db.clock()), job_id, until)) == 1

    def count(self, state: str) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,))[0][0])


def _in_flight(db: Cursor, now_s: int,
               keys: Collection[str] | None = None) -> dict[str, int]:
    """Webhook attempts `sending` under a lease that has not run out, per key (of `keys`)."""
    among = f" AND key_id IN ({', '.join('?' * len(keys))})" if keys else ""
    rows = db.query(f"SELECT key_id, COUNT(*) FROM jobs WHERE webhook_state = 'sending' AND "
                    f"webhook_after > ?{among} GROUP BY key_id", (now_s, *(keys or ())))
    return {str(key_id): int(n) for key_id, n in rows}
