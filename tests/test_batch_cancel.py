"""A batch's cancel keeps off SQLite's shared connection as its creation does
(test_batch_staging.py): the batch turns `cancelling` at once, so no claim takes its queued
items, and they end in short steps; a cancel a crash cut short is finished by the next
finalize round, in any process."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from proxy.api.batches import finalize
from proxy.billing import batches
from proxy.billing.db import Cursor
from proxy.billing.store import Store
from tests.test_batch_staging import ENDPOINT, items
from tests.test_journal import ANSWER, call

ITEMS = 3 * batches.STAGE_ROWS + 5


class Rows:
    """A transaction's cursor that adds up the job rows its statements change."""

    def __init__(self, cur: Cursor, changed: list[int]) -> None:
        self._cur, self._changed = cur, changed

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        changed = self._cur.execute(sql, args)
        if sql.startswith("UPDATE jobs"):
            self._changed[-1] += changed
        return changed

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cur.query(sql, args)


def opened(store: Store, count: int) -> str:
    key = store.create_key("big")[0]
    batch = store.batches.stage(key.id, ENDPOINT, "file-x", "24h", None, items(count), b"")
    return store.batches.open(batch).id


def states(store: Store, batch_id: str) -> dict[str, int]:
    return store.batches.counts(batch_id)


def test_a_cancel_ends_its_items_in_short_transactions(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """All 305 items ended in one transaction before (50,000 held SQLite's shared connection
    0.6-0.8 s)."""
    changed: list[int] = []
    with Store(database) as store:
        batch_id = opened(store, ITEMS)
        transaction = store.db.transaction

        @contextlib.contextmanager
        def counted() -> Iterator[Cursor]:
            changed.append(0)
            with transaction() as cur:
                yield Rows(cur, changed)

        monkeypatch.setattr(store.db, "transaction", counted)
        store.batches.cancel(batch_id)
        monkeypatch.undo()
        assert states(store, batch_id) == {"cancelled": ITEMS}
        assert store.batches.finalize(batch_id) is True
        batch = store.batches.get(batch_id)
        assert batch is not None and batch.status == "cancelled"
    assert sum(changed) == ITEMS and max(changed) <= batches.STAGE_ROWS, changed


def test_no_claim_takes_a_queued_item_of_a_cancelling_batch(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel cut short after its batch turned `cancelling` (a crash, or a claim between
    two of its steps): its queued items are not run, and the next finalize round, in any
    process, ends them; a job of no batch is claimed as ever."""
    with Store(database) as store:
        batch_id = opened(store, ITEMS)
        with monkeypatch.context() as patch:
            patch.setattr(store.batches, "cancel_queued", lambda batch_id: 0)
            store.batches.cancel(batch_id)
        lone = store.jobs.enqueue(store.create_key("other")[0].id, ENDPOINT, b"{}")
        claimed = store.jobs.claim_many(60, 64)
        assert [job.id for job in claimed] == [lone.id]
        assert states(store, batch_id) == {"queued": ITEMS}
        finalize(types.SimpleNamespace(store=store))  # type: ignore[arg-type]
        assert states(store, batch_id) == {"queued": ITEMS}, "the cancel's own call may be on it"
        store.db.execute("UPDATE batches SET cancelling_at = cancelling_at - ? WHERE id = ?",
                         (batches.CANCEL_CUT_S + 1, batch_id))
        finalize(types.SimpleNamespace(store=store))  # type: ignore[arg-type]
        assert states(store, batch_id) == {"cancelled": ITEMS}
        finalize(types.SimpleNamespace(store=store))  # type: ignore[arg-type]
        batch = store.batches.get(batch_id)
        assert batch is not None and batch.status == "cancelled"


@pytest.mark.parametrize("kept", [True, False], ids=["task", "sync"])
def test_an_item_handed_back_after_the_cancel(database: str, kept: bool) -> None:
    """An item running when its batch was cancelled, then handed back to the queue by a
    stopping process (job_worker._stop). With its submit's reply journaled (a task upstream)
    it is claimed again and polls that task; with a synchronous call cut off (no reply kept)
    a run would send the call again, so the finalize round ends it and writes the call off
    as abandoned (at c808685 both were ended; at d6502f8 both ran again, the synchronous one
    paying its host twice)."""
    with Store(database) as store:
        batch_id = opened(store, 3)
        (running,) = store.jobs.claim_many(60, 1)
        store.journal.begin(submitted := call(ticket=running.id))
        if kept:
            store.journal.answer(submitted.id, ANSWER)
        store.batches.cancel(batch_id)
        store.jobs.retry_later(running.id, 0, False)
        store.db.execute("UPDATE batches SET cancelling_at = cancelling_at - ? WHERE id = ?",
                         (batches.CANCEL_CUT_S + 1, batch_id))
        finalize(types.SimpleNamespace(store=store))  # type: ignore[arg-type]
        claimed = [job.id for job in store.jobs.claim_many(60, 64)]
        abandoned = store.db.query("SELECT request_id FROM ledger WHERE outcome = 'abandoned'")
        if kept:
            assert claimed == [running.id] and abandoned == []
            assert states(store, batch_id) == {"cancelled": 2, "processing": 1}
        else:
            assert claimed == [] and [row[0] for row in abandoned] == [submitted.id]
            assert states(store, batch_id) == {"cancelled": 3}


def test_an_item_in_a_shared_upstream_batch_handed_back_after_the_cancel(database: str) -> None:
    """An item riding a shared Gemini batch (proxy/providers/grouping.py remembers it in
    jobs.upstream_ref, with no journal row) handed back by a stopping process, then its batch
    cancelled: it was paid for in that upstream batch, so it runs again to read its answer
    (before: the cancel ended it, and the upstream batch it was paid in was never read)."""
    with Store(database) as store:
        batch_id = opened(store, 3)
        (running,) = store.jobs.claim_many(60, 1)
        store.jobs.remember([running.id], "batches/abc123")
        store.jobs.retry_later(running.id, 0, False, running.claim)
        store.batches.cancel(batch_id)
        store.db.execute("UPDATE batches SET cancelling_at = cancelling_at - ? WHERE id = ?",
                         (batches.CANCEL_CUT_S + 1, batch_id))
        finalize(types.SimpleNamespace(store=store))  # type: ignore[arg-type]
        assert [job.id for job in store.jobs.claim_many(60, 64)] == [running.id]
        assert states(store, batch_id) == {"cancelled": 2, "processing": 1}


def test_a_cancel_while_the_batch_is_validating(database: str) -> None:
    """A cancel that comes while the batch's items are still being written (GET /v1/batches
    lists it `validating`) is kept, and the batch opens `cancelling`, its items ended (before:
    its items written so far were ended, the batch opened `in_progress` and ended `completed`,
    every item of it "cancelled")."""
    with Store(database) as store:
        key = store.create_key("k")[0].id
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items(3), b"")
        store.batches.cancel(staged.id)
        assert states(store, staged.id) == {"queued": 3}  # nothing ended before it opens
        opened_batch = store.batches.open(staged)
        assert opened_batch.status == "cancelling"
        assert store.jobs.claim_many(60, 64) == []
        assert store.batches.cancel_queued(staged.id) == 3
        assert store.batches.finalize(staged.id)
        batch = store.batches.get(staged.id)
        assert batch is not None and batch.status == "cancelled"
