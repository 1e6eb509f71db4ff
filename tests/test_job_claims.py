"""A job's run writes only while the job is its claim's, on both engines: a run whose lease ran
out while it went on (cut off from the database, stalled) cannot overwrite the outcome of the
run that took the job over, re-arm that run's delivered webhook, hand its job back to the queue
or renew its lease; and an outcome written again after its first commit's answer was lost (a
connection that broke: Worker._record tries again) changes nothing, where the webhook went out
twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson

from proxy import supervise
from proxy.api.job_worker import Worker
from proxy.billing.db import ConnectionLost, Database
from proxy.billing.jobs import Jobs
from proxy.billing.journal import Call
from proxy.billing.store import Store

BODY = orjson.dumps({"model": "test-image", "prompt": "x"})
HOOK = "http://127.0.0.1:9/hooks"
LEASE_S = 360


def _webhook(store: Store, job_id: str) -> tuple[str, int]:
    (row,) = store.db.query("SELECT webhook_state, webhook_attempts FROM jobs WHERE id = ?",
                            (job_id,))
    return str(row[0]), int(row[1])


def _deliver(store: Store) -> list[str]:
    """One round of a replica's webhook loop: every attempt due, POSTed and delivered."""
    until = int(time.time()) + 60
    sent = store.jobs.claim_webhooks(until)
    for job in sent:
        assert store.jobs.webhook_done(job.id, until, True, None)
    return [job.id for job in sent]


def test_a_run_whose_lease_ran_out_cannot_overwrite_the_next_run_s_outcome(
        database: str) -> None:
    with Store(database) as a, Store(database) as b:  # two replicas, one database
        key = a.create_key("k")[0].id
        job = a.jobs.enqueue(key, "generations", BODY, callback_url=HOOK)
        started = time.time()
        (stale,) = a.jobs.claim_many(LEASE_S, 1, now=started)
        (taken,) = b.jobs.claim_many(LEASE_S, 1, now=started + LEASE_S + 1)  # lease ran out
        assert stale.id == taken.id == job.id and stale.claim != taken.claim
        assert b.jobs.finish(job.id, 200, b'{"data": []}', claim=taken.claim) == []
        assert _deliver(b) == [job.id] and _webhook(b, job.id) == ("delivered", 1)

        a.jobs.renew([(job.id, stale.claim)], LEASE_S)  # type: ignore[list-item]
        assert a.jobs.finish(job.id, 500, b'{"error": {}}', claim=stale.claim) is None
        assert not a.jobs.retry_later(job.id, 0, claim=stale.claim)
        after = b.jobs.get(job.id)
        assert after is not None
        assert (after.state, after.status, after.response) == ("succeeded", 200, b'{"data": []}')
        assert _deliver(b) == [] and _webhook(b, job.id) == ("delivered", 1)


def test_a_stale_run_cannot_hand_back_or_renew_the_job_another_run_holds(
        database: str) -> None:
    with Store(database) as a, Store(database) as b, Store(database) as c:
        key = a.create_key("k")[0].id
        job = a.jobs.enqueue(key, "generations", BODY)
        started = time.time()
        (stale,) = a.jobs.claim_many(LEASE_S, 1, now=started)
        (running,) = b.jobs.claim_many(LEASE_S, 1, now=started + LEASE_S + 1)
        assert not a.jobs.retry_later(job.id, 0, claim=stale.claim)  # a 429 on A's run
        assert c.jobs.claim_many(LEASE_S, 1) == [], "C would run the job B runs"
        assert b.jobs.retry_later(job.id, 0, counted=False, claim=running.claim)
        (again,) = c.jobs.claim_many(LEASE_S, 1)
        assert again.attempts == 2 and again.claim not in (stale.claim, running.claim)


def test_a_stale_claim_does_not_renew_the_lease_of_the_claim_that_holds_the_job(
        database: str) -> None:
    with Store(database) as a, Store(database) as b:
        key = a.create_key("k")[0].id
        job = a.jobs.enqueue(key, "generations", BODY)
        now = time.time()
        (stale,) = a.jobs.claim_many(-10, 1, now=now)  # its lease ran out at once
        (running,) = b.jobs.claim_many(-5, 1, now=now)  # and so did this one's
        a.jobs.renew([(job.id, stale.claim)], 600)  # type: ignore[list-item]
        (row,) = a.db.query("SELECT lease_until FROM jobs WHERE id = ?", (job.id,))
        assert int(row[0]) < now, "the stale claim renewed the holding claim's lease"
        b.jobs.renew([(job.id, running.claim)], 600)  # type: ignore[list-item]
        (row,) = a.db.query("SELECT lease_until FROM jobs WHERE id = ?", (job.id,))
        assert int(row[0]) > now + 500


def test_a_stale_run_s_accounted_calls_leave_the_journal(database: str) -> None:
    """Its finish writes nothing of the job, but the calls it accounted for (in the ledger
    already) go: the job is finished, and no run would ever settle them."""
    with Store(database) as a, Store(database) as b:
        key = a.create_key("k")[0].id
        job = a.jobs.enqueue(key, "generations", BODY)
        started = time.time()
        (stale,) = a.jobs.claim_many(LEASE_S, 1, now=started)
        (taken,) = b.jobs.claim_many(LEASE_S, 1, now=started + LEASE_S + 1)
        assert b.jobs.finish(job.id, 200, b"{}", (), claim=taken.claim) == []
        call = Call(f"{job.id}.aaaa", job.id, "m/p", 0, 0, "p", key, "t", "m", "1K", 1,
                    40_000, int(time.time()))
        a.journal.begin(call)
        assert a.jobs.finish(job.id, 500, b"{}", {call.id}, claim=stale.claim) is None
        done = a.jobs.get(job.id)
        assert done is not None and done.state == "succeeded" and not done.calls_left
        assert a.journal.count(job.id) == 0


class AnswerLost:
    """The database, except that the first transaction writing a job's outcome commits and
    then loses its answer (ConnectionLost: a PostgreSQL restart or failover at that instant);
    `meanwhile` runs in that gap."""

    def __init__(self, db: Database, meanwhile: Any) -> None:
        self._db = db
        self._meanwhile = meanwhile
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._db.transaction() as cur:
            yield cur
        if not self.lost and self._db.query("SELECT 1 FROM jobs WHERE state = 'succeeded'"):
            self.lost += 1
            self._meanwhile()
            raise ConnectionLost("PostgreSQL is unavailable (OperationalError)")


def test_an_outcome_written_again_after_its_answer_was_lost_sends_no_second_webhook(
        database: str) -> None:
    """Through the worker's own write path, which tries again on any DatabaseUnavailable."""
    with Store(database) as a, Store(database) as b:
        key = a.create_key("k")[0].id
        queued = a.jobs.enqueue(key, "generations", BODY, callback_url=HOOK)
        posts: list[str] = []
        flaky = AnswerLost(a.db, lambda: posts.extend(_deliver(b)))  # another replica's loop
        jobs = Jobs(flaky)  # type: ignore[arg-type]
        (job,) = jobs.claim_many(LEASE_S, 1)
        worker = Worker.__new__(Worker)  # only what _record uses
        worker._svc = SimpleNamespace(store=SimpleNamespace(jobs=jobs))  # type: ignore
        worker._runs = supervise.Failures("job_runs")
        accounted = SimpleNamespace(accounted=lambda: ())
        asyncio.run(worker._record(job, (200, b"{}"), None, accounted))  # type: ignore[arg-type]
        assert flaky.lost == 1
        posts.extend(_deliver(b))
        assert posts == [queued.id], f"{len(posts)} POSTs for one job"
