"""On SQLite, the settles and delivered marks the ledger writer takes together go in a few
multi-row statements (proxy/billing/rows.py: runs of powers of two), not one statement each:
every statement let the writer thread hand the GIL to the event loop and take it back. What
each request is billed stays exactly what one settle at a time bills."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.billing.rows import Delivered, Settle, in_runs, padded
from proxy.billing.store import Store
from tests.test_billing_store import entry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "switchyard.db") as opened:
        yield opened


def _ledger_statements(store: Store) -> list[str]:
    """Every statement that writes the ledger from now on (the shared connection's trace)."""
    seen: list[str] = []
    connection: sqlite3.Connection = store.db._db  # type: ignore[attr-defined]
    connection.set_trace_callback(
        lambda sql: seen.append(sql) if "ledger" in sql and "SELECT" not in sql else None)
    return seen


def test_an_in_list_is_padded_to_a_power_of_two() -> None:
    assert padded([1, 2, 3]) == [1, 2, 3, 3] and padded([7]) == [7] and padded([]) == []
    assert len(padded(list(range(33)))) == 64


def test_runs_are_powers_of_two_longest_first() -> None:
    assert [len(run) for run in in_runs(list(range(23)))] == [16, 4, 2, 1]
    assert [len(run) for run in in_runs(list(range(64)))] == [32, 32]  # 999 values at most
    assert list(in_runs([])) == []
    assert [x for run in in_runs(list(range(45))) for x in run] == list(range(45))


def test_a_batch_of_settles_and_marks_takes_a_statement_per_run(store: Store) -> None:
    key = store.create_key("k")[0].id
    settles: list[Settle] = [(None, entry(f"req_{i}", key), None) for i in range(23)]
    seen = _ledger_statements(store)
    assert store.money.write_each(settles) == [None] * 23  # type: ignore[arg-type]
    marks = [Delivered(f"req_{i}") for i in range(23)]
    assert store.money.write_each(marks) == [None] * 23  # type: ignore[arg-type]
    assert len(seen) == 5, seen  # rows 16 + 4 + 2 + 1, then one for the marks; one each took 46
    rows = store.db.query("SELECT COUNT(*), SUM(billed_micros), COUNT(delivered_at) "
                          "FROM ledger WHERE outcome = 'success'")
    assert tuple(rows[0]) == (23, 23 * 50_000, 23)


def test_a_request_billed_already_in_a_batch_is_billed_nothing_more(store: Store) -> None:
    """Its row stays as it was and its hold goes back unbilled; the others of its batch are
    billed as usual, in the batch's own statements."""
    record = store.create_key("budgeted")[0]
    key, period = record.id, "total"
    holds = [store.money.reserve(key, period, 50_000, 10_000_000) for _ in range(5)]
    assert None not in holds
    store.money.settle(holds[0], entry("req_0", key), period)  # the first try, committed
    again = store.money.reserve(key, period, 50_000, 10_000_000)  # its retry's hold
    settles: list[Settle] = [(again, entry("req_0", key, billed="0.09"), period)]
    settles += [(hold, entry(f"req_{i}", key), period) for i, hold in enumerate(holds[1:], 1)]
    assert store.money.write_each(settles) == [None] * 5  # type: ignore[arg-type]
    spent, reserved = store.money.spent(key, period)
    assert (spent, reserved) == (Decimal("0.25"), Decimal("0"))  # five requests at 0.05
    rows = store.db.query("SELECT request_id, billed_micros FROM ledger ORDER BY request_id")
    assert [tuple(row) for row in rows] == [(f"req_{i}", 50_000) for i in range(5)]


def test_a_request_twice_in_one_batch_is_billed_once(store: Store) -> None:
    """Row by row, as the writes came, in the batch's transaction (never each alone): the
    second success of one request bills nothing."""
    key = store.create_key("k")[0].id

    def alone(write: object) -> None:
        raise AssertionError(f"the batch fell back to writing {write!r} alone")

    store.money._write_one = alone  # type: ignore[method-assign]
    settles: list[Settle] = [(None, entry("req_a", key, outcome="timeout"), "total"),
                             (None, entry("req_a", key), "total"),
                             (None, entry("req_a", key, billed="0.09"), "total"),
                             (None, entry("req_b", key), "total")]
    assert store.money.write_each(settles) == [None] * 4  # type: ignore[arg-type]
    assert store.money.spent(key, "total") == (Decimal("0.10"), Decimal("0"))
    rows = store.db.query("SELECT request_id, outcome, billed_micros FROM ledger "
                          "ORDER BY request_id")
    assert [tuple(row) for row in rows] == [("req_a", "success", 50_000),
                                            ("req_b", "success", 50_000)]


def _now_statements(store: Store) -> list[str]:
    """Every statement of transaction_now's connection (a lone request's, on the loop)."""
    store.money.write_now([])  # opens it
    seen: list[str] = []
    connection: sqlite3.Connection = store.db._now  # type: ignore[attr-defined]
    connection.set_trace_callback(seen.append)
    return seen


def test_a_lone_settle_with_a_mark_takes_two_statements_and_no_select(store: Store) -> None:
    """Its INSERT's row count says whether it was billed already: no SELECT before it."""
    key = store.create_key("k")[0].id
    store.money.write_each([(None, entry("req_0", key), None)])  # type: ignore[list-item]
    seen = _now_statements(store)
    store.money.write_now([(None, entry("req_1", key), None), Delivered("req_0")])
    assert [sql.split()[0] for sql in seen] == ["BEGIN", "INSERT", "UPDATE", "COMMIT"], seen
    rows = store.db.query("SELECT request_id, billed_micros, delivered_at IS NOT NULL "
                          "FROM ledger ORDER BY request_id")
    assert [tuple(row) for row in rows] == [("req_0", 50_000, 1), ("req_1", 50_000, 0)]


def test_a_lone_settle_billed_already_is_billed_nothing_more(store: Store) -> None:
    record = store.create_key("budgeted")[0]
    key, period = record.id, "total"
    first = store.money.reserve(key, period, 50_000, 10_000_000)
    store.money.settle(first, entry("req_0", key), period)  # the first try, committed
    again = store.money.reserve(key, period, 50_000, 10_000_000)  # its retry's hold
    store.money.write_now([(again, entry("req_0", key, billed="0.09"), period)])
    assert store.money.spent(key, period) == (Decimal("0.05"), Decimal("0"))
    rows = store.db.query("SELECT billed_micros FROM ledger WHERE request_id = 'req_0'")
    assert [tuple(row) for row in rows] == [(50_000,)]
