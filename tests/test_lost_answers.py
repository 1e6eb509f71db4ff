"""A commit whose answer is lost (PostgreSQL restarted, failed over, or the connection cut at
that instant) when an async job is queued or a batch opened: the work was queued, so it is
found and answered as queued, where the client was told 503 "not served or billed, retry" and
the work ran and was billed anyway, twice with the openai SDK's retry (helper-48).

And a job's first run whose settle the database refused writes its $0 row later; by then
another run of the job may have settled its success under the job's id, which that late write
must not unbill (helper-48)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from proxy.billing.amounts import micros
from proxy.billing.batches import Batches
from proxy.billing.db import ConnectionLost, Database, DatabaseUnavailable, until_known
from proxy.billing.jobs import Jobs
from proxy.billing.keys import KeyLimits
from proxy.billing.money import unbilled
from proxy.billing.rows import FIELDS, LEDGER_INSERT
from proxy.billing.store import Store
from tests.test_batch_staging import ENDPOINT, items
from tests.test_billing_store import entry


class AnswerLost:
    """The database, except that the first write matching `marker` is made and its answer
    lost (ConnectionLost), in a transaction or alone."""

    def __init__(self, db: Database, marker: str, then_away: int = 0) -> None:
        self._db, self._marker, self.lost = db, marker, 0
        self.away = then_away  # calls refused after the loss (a restart under way)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, args: Any = ()) -> int:
        self._refuse()
        done = self._db.execute(sql, args)
        self._lose(sql)
        return done

    def query(self, sql: str, args: Any = ()) -> list[Any]:
        self._refuse()
        return list(self._db.query(sql, args))

    def _refuse(self) -> None:
        if self.lost and self.away:
            self.away -= 1
            raise DatabaseUnavailable("PostgreSQL is unavailable (no connection came)")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        wrote: list[str] = []

        class Cur:
            def __init__(self, cur: Any) -> None:
                self._cur = cur

            def execute(self, sql: str, args: Any = ()) -> int:
                wrote.append(sql)
                return int(self._cur.execute(sql, args))

            def query(self, sql: str, args: Any = ()) -> list[Any]:
                return list(self._cur.query(sql, args))

        self._refuse()
        with self._db.transaction() as cur:
            yield Cur(cur)
        for sql in wrote:
            self._lose(sql)

    def _lose(self, sql: str) -> None:
        if not self.lost and sql.startswith(self._marker):
            self.lost += 1
            raise ConnectionLost("PostgreSQL is unavailable (OperationalError)")


def test_a_job_queued_whose_answer_was_lost_is_queued_once(database: str) -> None:
    with Store(database) as store:
        flaky = AnswerLost(store.db, "INSERT INTO jobs")
        job = Jobs(flaky).enqueue("key_1", "generations", b"{}", most=100)  # type: ignore[arg-type]
        assert flaky.lost == 1
        assert store.db.query("SELECT id FROM jobs") == [(job.id,)]


def test_a_job_queued_whose_answer_was_lost_in_a_restart_is_queued_once(
        database: str) -> None:
    """The server restarting after the lost answer: the next tries find it away, and the
    job is looked for until it answers (helper-50: after three quick tries, a 503)."""
    with Store(database) as store:
        flaky = AnswerLost(store.db, "INSERT INTO jobs", then_away=5)
        jobs = Jobs(flaky)  # type: ignore[arg-type]
        job = asyncio.run(until_known(functools.partial(
            jobs.queue, jobs.new("key_1", "generations", b"{}"), 100)))
        assert store.db.query("SELECT id FROM jobs") == [(job.id,)]


def test_a_batch_opened_whose_answer_was_lost_is_open(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items(3), b"")
        flaky = AnswerLost(store.db, "UPDATE batches SET in_progress_at", then_away=3)
        batches = Batches(flaky)  # type: ignore[arg-type]
        opened = asyncio.run(until_known(functools.partial(batches.open, staged)))
        assert flaky.lost == 1 and opened.status == "in_progress"
        assert flaky.away == 0  # every refusal was met (helper-52: none were)


def test_a_refused_settle_written_late_leaves_a_later_run_s_success_billed(
        database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        budget, price = micros(Decimal(1)), micros(Decimal("0.02"))
        first = store.money.reserve(key, "total", price, budget)
        assert store.jobs.claim(60) is not None  # the rerun, under way
        second = store.money.reserve(key, "total", price, budget)
        rerun = entry(job.id, key, "0.02", when=int(time.time()) + 5)
        store.money.settle(second, rerun, "total")  # the rerun's success
        # The first run's refused settle, written once the database is back.
        store.money._refused(first, unbilled(entry(job.id, key, "0.02")), "total")
        row = store.money.entry(job.id)
        assert row is not None and (row.outcome, row.billed_micros) == ("success", price)
        assert store.money.spent(key, "total") == (Decimal("0.02"), Decimal(0))


@pytest.mark.parametrize("since", ["failed", "still running"])
def test_a_refused_settle_written_late_unbills_its_own_committed_row(database: str,
                                                                    since: str) -> None:
    """The first try had committed, its answer lost: its own billed row is unbilled as a
    request's is, whether the job failed since (helper-50) or is still the refused run's,
    waiting to go back to the queue (helper-51): a failure's row cannot replace a billed one,
    so the job would have ended failed and billed."""
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        budget, price = micros(Decimal(1)), micros(Decimal("0.02"))
        assert store.jobs.claim(60) is not None  # the refused run
        first = store.money.reserve(key, "total", price, budget)
        store.money.settle(first, entry(job.id, key, "0.02"), "total")  # committed, then lost
        if since == "failed":
            assert store.jobs.finish(job.id, 502, b'{"error": {}}') == []
        store.money._refused(first, unbilled(entry(job.id, key, "0.02")), "total")
        row = store.money.entry(job.id)
        assert row is not None and (row.outcome, row.billed_micros) == ("database_unavailable", 0)
        assert store.money.spent(key, "total") == (Decimal(0), Decimal(0))


def test_writes_looking_for_themselves_hold_no_thread_while_they_wait() -> None:
    """Many queued jobs lost their answers as the server went away: their waits are the event
    loop's, so other calls of the process still find a thread (helper-51: each wait held one
    of the loop's few threads for 10 s, and every other thread hop of the process waited)."""
    tries: list[int] = []

    def lost_then_away() -> None:
        tries.append(1)
        if len(tries) <= 8:
            raise ConnectionLost("PostgreSQL is unavailable (OperationalError)")
        raise DatabaseUnavailable("PostgreSQL is unavailable (no connection came)")

    async def meanwhile() -> float:
        waiting = [asyncio.ensure_future(until_known(lost_then_away, within_s=1.0))
                   for _ in range(8)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(lambda: None)
        took = time.monotonic() - started
        assert all(isinstance(r, DatabaseUnavailable)
                   for r in await asyncio.gather(*waiting, return_exceptions=True))
        return took

    assert asyncio.run(meanwhile()) < 0.2


class AwayAfterUpdate:
    """The database, away right after a batch's open UPDATE commits."""

    def __init__(self, db: Database) -> None:
        self._db, self.away = db, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, args: Any = ()) -> int:
        self._refuse()
        done = self._db.execute(sql, args)
        self.away = sql.startswith("UPDATE batches SET in_progress_at")
        return done

    def query(self, sql: str, args: Any = ()) -> list[Any]:
        self._refuse()
        return list(self._db.query(sql, args))

    def transaction(self) -> Any:
        self._refuse()
        return self._db.transaction()

    def _refuse(self) -> None:
        if self.away:
            raise DatabaseUnavailable("PostgreSQL is unavailable (no connection came)")


def test_an_open_answered_unavailable_left_the_batch_unopened(database: str) -> None:
    """The open's commit and its read of the batch are one transaction: the database going
    away between them cannot tell the client 503 for a batch that is open and runs
    (helper-52: they went on two connections)."""
    with Store(database) as store:
        key = store.create_key("k")[0].id
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items(3), b"")
        batches = Batches(AwayAfterUpdate(store.db))  # type: ignore[arg-type]
        try:
            told = asyncio.run(until_known(functools.partial(batches.open, staged))).status
        except DatabaseUnavailable:
            told = "unavailable"
        batch = store.batches.get(staged.id)
        assert batch is not None
        assert (told == "unavailable") == (batch.status == "validating"), (told, batch.status)


def test_a_rerun_s_success_that_met_the_refused_run_s_row_stays_billed(database: str) -> None:
    """Run 1's success committed, its answer lost; run 2's success then finds that row and
    bills nothing more (its bill is that row); run 1's refused write comes late. The row
    became run 2's, so it stays billed once (helper-52: unbilled, the job succeeded at $0)."""
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        budget, price = micros(Decimal(1)), micros(Decimal("0.02"))
        assert store.jobs.claim(60) is not None  # run 1
        first = store.money.reserve(key, "total", price, budget)
        run1 = entry(job.id, key, "0.02")
        store.money.settle(first, run1, "total")  # committed, its answer lost
        assert store.jobs.retry_later(job.id, 0, counted=False)
        assert store.jobs.claim(60) is not None  # run 2
        second = store.money.reserve(key, "total", price, budget)
        rerun = replace(entry(job.id, key, "0.02", when=int(time.time()) + 5),
                        latency_ms=900, upstream_id="up-2")  # its own call
        assert store.money.write_each([(second, rerun, "total")]) == [None]  # as the writer
        store.money._refused(first, unbilled(run1), "total")
        assert store.jobs.finish(job.id, 200, b'{"data": []}') == []
        row = store.money.entry(job.id)
        assert row is not None and (row.outcome, row.billed_micros) == ("success", price)
        assert store.money.spent(key, "total") == (Decimal("0.02"), Decimal(0))


def test_an_adopted_row_keeps_the_budget_window_of_its_bill(database: str) -> None:
    """Run 1 billed the job on day 1 (its answer lost), run 2 made the row its own on day 2
    and lost its answer too; both late writes come. The bill stays where it went, day 1, and
    no window is taken below what it holds (helper-53: run 2's late write unbilled the row
    and took the bill out of day 2, where it never was)."""
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1),
                                                     budget_period="daily"))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        budget, price = micros(Decimal(1)), micros(Decimal("0.02"))
        day1, day2 = "2026-12-01", "2026-12-02"
        assert store.jobs.claim(60) is not None
        first = store.money.reserve(key, day1, price, budget)
        run1 = entry(job.id, key, "0.02")
        store.money.settle(first, run1, day1)
        assert store.jobs.retry_later(job.id, 0, counted=False)
        assert store.jobs.claim(60) is not None
        second = store.money.reserve(key, day2, price, budget)
        run2 = replace(entry(job.id, key, "0.02", when=int(time.time()) + 86_400),
                       latency_ms=900, upstream_id="up-2")
        assert store.money.write_each([(second, run2, day2)]) == [None]
        store.money._refused(first, unbilled(run1), day1)
        store.money._refused(second, unbilled(run2), day2)
        row = store.money.entry(job.id)
        assert row is not None
        spent1, spent2 = store.money.spent(key, day1)[0], store.money.spent(key, day2)[0]
        assert (micros(spent1 + spent2), spent2 >= 0) == (row.billed_micros, True), (
            row.outcome, row.billed_micros, spent1, spent2)


def test_a_rerun_adopts_a_row_that_commits_while_its_settle_waits(postgres_url: str) -> None:
    """PostgreSQL: run 1's transaction, told refused, still holds its uncommitted row while
    run 2's settle runs; run 2's insert waits for it and finds it billed. The adoption comes
    after the insert, so it reads that row (helper-53: before it, it saw none, and run 1's
    late write then unbilled the job run 2 delivered)."""
    import psycopg

    with Store(postgres_url) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        run1 = entry(job.id, key, "0.02")
        run2 = replace(entry(job.id, key, "0.02", when=int(time.time()) + 5), latency_ms=900,
                       upstream_id="up-2")
        with psycopg.connect(postgres_url) as other:  # run 1's, not committed yet
            other.execute(LEDGER_INSERT.replace("?", "%s"),
                          tuple(getattr(run1, name) for name in FIELDS))
            done: list[object] = []
            writer = threading.Thread(target=lambda: done.append(
                store.money.write_each([(None, run2, None)])))
            writer.start()
            time.sleep(0.5)
            assert writer.is_alive()  # waiting on run 1's row
            other.commit()
        writer.join(10)
        assert done == [[None]]
        store.money._refused(None, unbilled(run1), None)
        row = store.money.entry(job.id)
        assert row is not None and (row.outcome, row.billed_micros) == ("success", 20_000)
