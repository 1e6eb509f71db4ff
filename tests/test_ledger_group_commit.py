"""Settles written together (the ledger writer's group commit) on PostgreSQL, where more
than one writer thread writes batches side by side: two batches holding the same keys in opposite
orders must not deadlock, and a transaction the database rolls back for a conflict is each
request's own settle tried again, never a 503 for every request in the batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from proxy.billing.db import Conflict, Cursor
from proxy.billing.money import Money
from proxy.billing.rows import Settle
from proxy.billing.store import Store
from tests.test_billing_store import entry

SLOW_S = 0.4  # each settle holds its transaction this long: the two batches overlap


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    with Store(postgres_url) as opened:
        yield opened


def test_two_batches_with_the_same_keys_in_opposite_orders_both_settle(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [store.create_key(name)[0].id for name in ("a", "b")]
    real = Money._settle_in

    def slow(self: Money, cur: Cursor, *args: object) -> None:
        real(self, cur, *args)  # type: ignore[arg-type]
        time.sleep(SLOW_S)

    monkeypatch.setattr(Money, "_settle_in", slow)
    answers: dict[str, list[BaseException | None]] = {}

    def write(name: str, order: list[str]) -> None:
        writes: list[Settle] = [(None, entry(f"req_{name}_{key}", key), "total")
                                for key in order]
        answers[name] = store.money.write_each(writes)  # type: ignore[arg-type]

    threads = [threading.Thread(target=write, args=("one", keys)),
               threading.Thread(target=write, args=("two", keys[::-1]))]
    threads[0].start()
    time.sleep(SLOW_S / 4)
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert answers == {"one": [None, None], "two": [None, None]}, answers
    assert len(store.deferred) == 0
    rows = store.db.query("SELECT COUNT(*), SUM(billed_micros) FROM ledger "
                          "WHERE outcome = 'success'")
    assert rows[0][0] == 4 and int(rows[0][1]) == 4 * 50_000


def test_a_batch_rolled_back_for_a_conflict_is_each_settle_alone(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    key = store.create_key("a")[0].id

    def conflict(self: Money, writes: object, when: int) -> None:
        raise Conflict("PostgreSQL is unavailable (DeadlockDetected)")

    monkeypatch.setattr(Money, "_write_all", conflict)
    writes: list[Settle] = [(None, entry(f"req_{i}", key), "total") for i in range(3)]
    assert store.money.write_each(writes) == [None] * 3  # type: ignore[arg-type]
    assert len(store.deferred) == 0
    assert store.db.query("SELECT COUNT(*) FROM ledger")[0][0] == 3
