"""The job queue's storage on both engines (SQLite and the machine's PostgreSQL): claims in
batches that skip tenants at their limits and never hand one job to two claimers, leases that
renew and run out, requeues that do or do not cost an attempt, remembered upstream batches,
and budget holds that outlive the crash sweep."""

from __future__ import annotations

import threading
import time

import orjson

from proxy.billing.store import Store

BODY = orjson.dumps({"model": "test-image", "prompt": "x"})


def test_claims_skip_tenants_and_never_share_a_job(database: str) -> None:
    with Store(database) as store:
        a, b = store.create_key("a")[0].id, store.create_key("b")[0].id
        jobs = [store.jobs.enqueue(owner, "generations", BODY) for owner in [a] * 30 + [b] * 30]
        first = store.jobs.claim_many(60, 10, skip_keys=[a])
        assert len(first) == 10 and {j.key_id for j in first} == {b}
        won: list[str] = []
        lock = threading.Lock()

        def claimer() -> None:
            while batch := store.jobs.claim_many(60, 7):
                with lock:
                    won.extend(j.id for j in batch)

        threads = [threading.Thread(target=claimer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == len(set(won)) == 50, "every other job claimed once, by one claimer"
        assert set(won) | {j.id for j in first} == {j.id for j in jobs}


def test_leases_renew_and_a_requeue_may_cost_no_attempt(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        job = store.jobs.enqueue(key, "generations", BODY)
        (claimed,) = store.jobs.claim_many(-1, 5)  # a lease that has already run out
        store.jobs.renew([(claimed.id, claimed.claim)], 600)  # type: ignore[list-item]
        assert store.jobs.claim_many(60, 5) == [], "a renewed lease keeps its job"
        store.jobs.retry_later(job.id, 0, counted=False)
        (again,) = store.jobs.claim_many(60, 5)
        assert again.attempts == 1, "waiting its turn cost nothing"
        store.jobs.retry_later(job.id, 0)
        assert store.jobs.claim_many(60, 5)[0].attempts == 2


def test_a_job_remembers_its_upstream_batch(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        ids = [store.jobs.enqueue(key, "generations", BODY).id for _ in range(3)]
        assert store.jobs.recall(ids[0]) is None
        store.jobs.remember(ids[:2], "batches/abc123")
        assert [store.jobs.recall(i) for i in ids] == ["batches/abc123"] * 2 + [None]


def test_a_finished_job_marks_its_ledger_row_delivered(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        job = store.jobs.enqueue(key, "generations", BODY)
        store.db.execute(
            "INSERT INTO ledger (request_id, key_id, tenant, model, tier, n_asked, n_delivered, "
            "billed_micros, upstream_micros, latency_ms, outcome, attempts, created_at) "
            "VALUES (?, ?, 't', 'm', '1K', 1, 1, 1, 1, 1, 'success', 1, ?)",
            (job.id, key, int(time.time())))
        store.jobs.finish(job.id, 200, b"{}")
        assert store.db.query("SELECT delivered_at FROM ledger WHERE request_id = ?",
                              (job.id,))[0][0] is not None


def test_a_budget_hold_outlives_the_crash_sweep(database: str) -> None:
    with Store(database) as store:
        held = store.money.reserve("key_1", "total", 500, 1_000, hold_s=86_400)
        short = store.money.reserve("key_1", "total", 400, 1_000)
        assert held and short
        assert store.money.reserve("key_1", "total", 200, 1_000) is None, "never overspends"
        store.db.execute("UPDATE reservations SET created_at = created_at - 7200")
        assert store.money.sweep(older_than_s=600) == 1
        spent, reserved = store.money.spent("key_1", "total")
        assert (spent, reserved * 1_000_000) == (0, 500)
