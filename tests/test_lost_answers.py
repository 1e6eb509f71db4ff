"""A commit whose answer is lost (PostgreSQL restarted, failed over, or the connection cut at
that instant) when an async job is queued or a batch opened: the work was queued, so it is
found and answered as queued, where the client was told 503 "not served or billed, retry" and
the work ran and was billed anyway, twice with the openai SDK's retry (helper-48).

And a job's first run whose settle the database refused writes its $0 row later; by then
another run of the job may have settled its success under the job's id, which that late write
must not unbill (helper-48)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from proxy.billing.batches import Batches
from proxy.billing.db import ConnectionLost, Database, DatabaseUnavailable
from proxy.billing.jobs import Jobs
from proxy.billing.keys import KeyLimits
from proxy.billing.money import micros, unbilled
from proxy.billing.store import Store
from tests.test_batch_staging import ENDPOINT, items
from tests.test_billing_store import entry


class AnswerLost:
    """The database, except that the first write matching `marker` is made and its answer
    lost (ConnectionLost), in a transaction or alone."""

    def __init__(self, db: Database, marker: str, then_away: int = 0) -> None:
        self._db, self._marker, self.lost = db, marker, 0
        self._away = then_away  # transactions refused after the loss (a restart under way)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, args: Any = ()) -> int:
        done = self._db.execute(sql, args)
        self._lose(sql)
        return done

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

        if self.lost and self._away:
            self._away -= 1
            raise DatabaseUnavailable("PostgreSQL is unavailable (no connection came)")
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
        job = Jobs(flaky).enqueue("key_1", "generations", b"{}", most=100)  # type: ignore[arg-type]
        assert store.db.query("SELECT id FROM jobs") == [(job.id,)]


def test_a_batch_opened_whose_answer_was_lost_is_open(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items(3), b"")
        flaky = AnswerLost(store.db, "UPDATE batches SET in_progress_at")
        opened = Batches(flaky).open(staged)  # type: ignore[arg-type]
        assert flaky.lost == 1 and opened.status == "in_progress"


def test_a_refused_settle_written_late_leaves_a_later_run_s_success_billed(
        database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        budget, price = micros(Decimal(1)), micros(Decimal("0.02"))
        first = store.money.reserve(key, "total", price, budget)
        assert store.jobs.claim(60) is not None  # the rerun, under way
        second = store.money.reserve(key, "total", price, budget)
        store.money.settle(second, entry(job.id, key, "0.02"), "total")  # the rerun's success
        # The first run's refused settle, written once the database is back.
        store.money._refused(first, unbilled(entry(job.id, key, "0.02")), "total")
        row = store.money.entry(job.id)
        assert row is not None and (row.outcome, row.billed_micros) == ("success", price)
        assert store.money.spent(key, "total") == (Decimal("0.02"), Decimal(0))


def test_a_refused_settle_written_late_unbills_a_job_no_run_holds(database: str) -> None:
    """The first try had committed, its answer lost: the job went back to the queue and, say,
    failed since. Its billed row is unbilled as a request's is (helper-50: it stayed billed
    for a job that failed)."""
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        job = store.jobs.enqueue(key, "generations", b"{}")
        budget, price = micros(Decimal(1)), micros(Decimal("0.02"))
        first = store.money.reserve(key, "total", price, budget)
        store.money.settle(first, entry(job.id, key, "0.02"), "total")  # committed, then lost
        assert store.jobs.finish(job.id, 502, b'{"error": {}}') == []  # a later run failed it
        store.money._refused(first, unbilled(entry(job.id, key, "0.02")), "total")
        row = store.money.entry(job.id)
        assert row is not None and (row.outcome, row.billed_micros) == ("database_unavailable", 0)
        assert store.money.spent(key, "total") == (Decimal(0), Decimal(0))
