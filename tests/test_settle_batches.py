"""Settles and delivered marks written together (Money.write_each, the ledger writer's group
commit) bill exactly what one settle at a time bills, on both engines. On PostgreSQL a batch
goes as one script in one round trip (its statements bound client-side), so its values must
also arrive exactly as given, quotes and backslashes included."""

from __future__ import annotations

from decimal import Decimal

from proxy.billing.rows import Delivered, Settle
from proxy.billing.store import Store
from tests.test_billing_store import entry


def written(store: Store, writes: list[Settle | Delivered]) -> None:
    """`writes` as one batch, which must not fall back to one write at a time (that path
    would hide a batch that failed). On SQLite a lone write is `settle`'s own path."""
    def alone(write: Settle | Delivered) -> None:
        raise AssertionError(f"the batch fell back to writing {write!r} alone")

    if len(writes) > 1 or store.db.engine == "postgres":
        store.money._write_one = alone  # type: ignore[method-assign]
    assert store.money.write_each(writes) == [None] * len(writes)


def test_a_batch_bills_reservations_windows_and_repeats_as_settles_do(database: str) -> None:
    with Store(database) as store:
        budget = 1_000_000
        held = [store.money.reserve("key_a", "total", 100_000, budget) for _ in range(3)]
        assert None not in held
        written(store, [
            (held[0], entry("req_1", "key_a", billed="0.04"), "total"),  # billed from a hold
            (held[1], entry("req_2", "key_a", outcome="overloaded"), "total"),  # a failure
            (None, entry("req_3", "key_b", billed="0.05"), "2026-11"),  # no budget: no hold
            (None, entry("req_4", "key_b", outcome="timeout"), "2026-11"),
            (None, entry("req_5", "key_c", billed="0.02"), None),  # no window to add to
        ])
        # Spent and still held (the third hold is for the repeat below).
        assert store.money.spent("key_a", "total") == (Decimal("0.04"), Decimal("0.1"))
        assert store.money.spent("key_b", "2026-11") == (Decimal("0.05"), Decimal(0))
        # The same success again (a retried batch) with a hold of its own: billed nothing
        # more, the hold given back; and a mark for a row of the first batch.
        written(store, [(held[2], entry("req_1", "key_a", billed="0.04"), "total"),
                        (None, entry("req_3", "key_b", billed="0.05"), "2026-11"),
                        Delivered("req_1")])
        assert store.money.spent("key_a", "total") == (Decimal("0.04"), Decimal(0))
        assert store.money.spent("key_b", "2026-11") == (Decimal("0.05"), Decimal(0))
        assert store.db.query("SELECT COUNT(*) FROM reservations") == [(0,)]
        rows = {row[0]: (row[1], int(row[2]), row[3] is not None) for row in store.db.query(
            "SELECT request_id, outcome, billed_micros, delivered_at FROM ledger")}
        assert rows == {"req_1": ("success", 40_000, True), "req_2": ("overloaded", 0, False),
                        "req_3": ("success", 50_000, False), "req_4": ("timeout", 0, False),
                        "req_5": ("success", 20_000, False)}


def test_a_failure_in_the_ledger_gives_way_to_a_later_success_in_a_batch(database: str) -> None:
    with Store(database) as store:
        written(store, [(None, entry("job_1", "key_a", outcome="cancelled"), "total"),
                        (None, entry("job_2", "key_a", billed="0.01"), "total")])
        written(store, [(None, entry("job_1", "key_a", billed="0.05"), "total"),
                        (None, entry("job_2", "key_a", outcome="timeout"), "total")])
        outcomes = dict(store.db.query("SELECT request_id, outcome FROM ledger"))
        assert outcomes == {"job_1": "success", "job_2": "success"}
        assert store.money.spent("key_a", "total") == (Decimal("0.06"), Decimal(0))


def test_values_with_quotes_and_backslashes_arrive_as_given(database: str) -> None:
    model = "m'; DROP TABLE ledger; --\\ 100% \"x\""
    with Store(database) as store:
        written(store, [(None, entry("req_'1", "key_'a", model=model, provider="p\\'"),
                         "total"), Delivered("req_'1")])
        (row,) = store.db.query("SELECT request_id, key_id, model, provider FROM ledger")
        assert tuple(row) == ("req_'1", "key_'a", model, "p\\'")
        assert store.money.spent("key_'a", "total") == (Decimal("0.05"), Decimal(0))


def test_a_lone_settle_bills_as_a_batch_does(database: str) -> None:
    """On PostgreSQL one write goes as a script too: one round trip where it took five."""
    with Store(database) as store:
        held = store.money.reserve("key_a", "total", 100_000, 1_000_000)
        written(store, [(held, entry("req_1", "key_a", billed="0.03"), "total")])
        written(store, [Delivered("req_1")])
        assert store.money.spent("key_a", "total") == (Decimal("0.03"), Decimal(0))
        (row,) = store.db.query("SELECT billed_micros, delivered_at FROM ledger")
        assert int(row[0]) == 30_000 and row[1] is not None
