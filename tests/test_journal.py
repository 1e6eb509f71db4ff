"""The journal of upstream submits (proxy/billing/journal.py) on SQLite and PostgreSQL: calls
written down, their replies kept and handed back, and what cannot be resumed written to the
ledger as `abandoned` (billed $0, its quote as upstream spend), exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from proxy.billing.journal import Answer, Call, Journal
from proxy.billing.store import Store
from tests.test_batch_staging import ENDPOINT


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    with Store(database) as opened:
        yield opened


def call(ordinal: int = 0, ticket: str = "imgjob_1", route: str = "m/task-host",
         part: int = 0, age_s: int = 0) -> Call:
    return Call(f"{ticket}.{route[-4:]}{part}{ordinal}", ticket, route, part, ordinal,
                route.split("/")[1], "key_1", "acme", "m", "1K", 1, 40_000,
                int(time.time()) - age_s)


ANSWER = Answer(200, (("content-type", "application/json"), ("x-request-id", "r1")),
                b'{"id": "task-1", "status": "running"}')


def ledger(store: Store) -> list[tuple[object, ...]]:
    return [tuple(row) for row in store.db.query(
        "SELECT request_id, key_id, tenant, model, provider, route, tier, n_asked, n_delivered, "
        "billed_micros, upstream_micros, outcome, failure, attempts, created_at FROM ledger "
        "ORDER BY request_id")]


def test_a_call_with_its_reply_is_handed_back_on_its_route(store: Store) -> None:
    journal = store.journal
    journal.begin(first := call())
    journal.begin(first)  # a retried insert changes nothing
    journal.answer(first.id, ANSWER)
    assert journal.recover("imgjob_1", ["m/task-host"]) == ([(first, ANSWER)], [])
    assert journal.count("imgjob_1") == 1 and journal.count("imgjob_2") == 0
    assert ledger(store) == []


def test_a_call_without_a_reply_is_abandoned_once(store: Store) -> None:
    journal = store.journal
    journal.begin(cut := call(age_s=100))
    kept, abandoned = journal.recover("imgjob_1", ["m/task-host"])
    assert (kept, abandoned) == ([], [cut])
    assert journal.count() == 0
    assert ledger(store) == [(cut.id, "key_1", "acme", "m", "task-host", "m/task-host", "1K", 1,
                              0, 0, 40_000, "abandoned", "abandoned", 1, cut.created_at)]
    assert journal.recover("imgjob_1", ["m/task-host"]) == ([], [])
    assert len(ledger(store)) == 1


def test_a_reply_on_a_route_the_request_no_longer_has_is_abandoned(store: Store) -> None:
    journal = store.journal
    journal.begin(gone := call())
    journal.answer(gone.id, ANSWER)
    assert journal.recover("imgjob_1", ["m/other"]) == ([], [gone])
    assert [row[0] for row in ledger(store)] == [gone.id]


def test_a_jobs_outcome_drops_what_its_run_accounted_for_and_reports_the_rest(
        store: Store) -> None:
    job = store.jobs.enqueue("key_1", "generations", b"{}")
    for one in (ours := call(0, ticket=job.id), failed := call(1, ticket=job.id),
                left := call(2, ticket=job.id), other := call(0, ticket="imgjob_other")):
        store.journal.begin(one)
    store.journal.answer(left.id, ANSWER)  # a task taken up, never gone back to
    store.journal.drop([failed.id])
    assert store.jobs.finish(job.id, 200, b"{}", {ours.id, failed.id}) == [left]
    assert store.jobs.finish(job.id, 200, b"{}", {ours.id}) == []  # tried again: no change
    assert [row[0] for row in ledger(store)] == [left.id]
    assert store.journal.count() == 1 and store.journal.count(other.ticket) == 1


def test_a_job_that_ends_without_running_again_reports_what_a_crash_left(store: Store) -> None:
    job = store.jobs.enqueue("key_1", "generations", b"{}")
    store.journal.begin(cut := call(ticket=job.id))
    assert store.jobs.finish(job.id, 401, b"{}") == [cut]
    assert [row[0] for row in ledger(store)] == [cut.id] and store.journal.count() == 0


def test_cancelling_a_batch_spares_the_items_with_a_task_to_take_up(store: Store) -> None:
    """An item whose submit is journaled with its reply has a task upstream a run can poll
    (paid for): running, or handed back to the queue by a stopping process, it runs on. One
    whose call was cut off with no reply kept (a synchronous call) would send it again: the
    cancel ends it and writes the cut-off call to the ledger as abandoned, as for a crash."""
    fresh, polled, cut, running = (store.jobs.enqueue("key_1", "generations", b"{}")
                                   for _ in range(4))
    batch_id = store.batches.open(store.batches.stage("key_1", ENDPOINT, "file-x", "24h", None,
                                                      [], b"")).id
    store.db.execute("UPDATE jobs SET batch_id = ? WHERE id IN (?, ?, ?, ?)",
                     (batch_id, fresh.id, polled.id, cut.id, running.id))
    store.db.execute("UPDATE jobs SET state = 'processing' WHERE id = ?", (running.id,))
    store.journal.begin(submitted := call(ticket=polled.id))
    store.journal.answer(submitted.id, ANSWER)
    store.journal.begin(left := call(ticket=cut.id, route="m/sync-host"))
    store.journal.begin(call(ticket=running.id))
    store.batches.cancel(batch_id)
    states = dict(store.db.query("SELECT id, state FROM jobs"))
    assert states == {fresh.id: "cancelled", polled.id: "queued", cut.id: "cancelled",
                      running.id: "processing"}
    assert [row[0] for row in ledger(store)] == [left.id]  # abandoned
    assert store.journal.count(polled.id) == 1 and store.journal.count(running.id) == 1
    assert [job.id for job in store.jobs.claim_many(60, 10)] == [polled.id]


def test_usage_counts_abandoned_calls_as_spend_not_as_requests(store: Store) -> None:
    journal = store.journal
    journal.begin(call(ticket="imgjob_a"))
    journal.recover("imgjob_a", [])
    journal.begin(call(ticket="imgjob_b", route="m/sync-host"))
    journal.recover("imgjob_b", [])
    (row,) = store.usage.report(["model"])
    assert (row.requests, row.succeeded, row.images) == (0, 0, 0)
    assert str(row.billed_usd) == "0.000000" and str(row.upstream_usd) == "0.080000"
    by_provider = {r.group["provider"]: r.upstream_usd for r in store.usage.report(["provider"])}
    assert {k: str(v) for k, v in by_provider.items()} == {"sync-host": "0.040000",
                                                           "task-host": "0.040000"}


def test_journal_is_on_the_store(store: Store) -> None:
    assert isinstance(store.journal, Journal)


def test_a_job_forgets_only_the_upstream_batch_it_still_remembers(store: Store) -> None:
    """A member whose shared batch ended without its answer forgets it (grouping.py), but not
    a batch it has been sent in since."""
    job = store.jobs.enqueue("key_1", "generations", b"{}")
    store.jobs.remember([job.id], "batches/new")
    store.jobs.forget(job.id, "batches/old")
    assert store.jobs.recall(job.id) == "batches/new"
    store.jobs.forget(job.id, "batches/new")
    assert store.jobs.recall(job.id) is None
