"""Releases and settles of one budget hold racing each other on PostgreSQL (found by review):
a hold is freed once, and a deadlock between two transactions is a conflict, which the
ledger writer answers by writing each settle alone, never a 503 for a delivered image."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from proxy.billing.db import Conflict
from proxy.billing.store import Store


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    with Store(postgres_url) as opened:
        yield opened


def test_a_release_racing_a_settle_frees_the_hold_once(store: Store, postgres_url: str) -> None:
    held = store.money.reserve("key_a", "total", 100_000, 1_000_000)
    other = store.money.reserve("key_a", "total", 40_000, 1_000_000)  # still held after
    assert held is not None and other is not None
    settling = psycopg.connect(postgres_url)  # a settle of `held`, holding its locks
    settling.execute("DELETE FROM reservations WHERE id = %s", (held,))
    settling.execute("UPDATE budget_counters SET reserved_micros = reserved_micros - 100000, "
                     "spent_micros = spent_micros + 30000 WHERE key_id = 'key_a'")
    release = threading.Thread(target=store.money.release, args=(held,))
    release.start()  # it read the hold before the settle commits, then waits on a lock
    time.sleep(0.5)
    settling.commit()
    settling.close()
    release.join(10)
    spent, reserved = store.money.spent("key_a", "total")
    assert (int(spent * 1_000_000), int(reserved * 1_000_000)) == (30_000, 40_000)


def test_a_deadlock_is_a_conflict(store: Store) -> None:
    for key in ("key_a", "key_b"):
        assert store.money.reserve(key, "total", 1, None) is not None
    met: list[BaseException] = []
    both = threading.Barrier(2)

    def write(first: str, second: str) -> None:
        try:
            with store.db.transaction() as cur:
                for key in (first, second):
                    cur.execute("UPDATE budget_counters SET spent_micros = spent_micros + 1 "
                                "WHERE key_id = ?", (key,))
                    if key == first:
                        both.wait(5)
        except BaseException as exc:  # the test looks at what it was
            met.append(exc)

    threads = [threading.Thread(target=write, args=pair)
               for pair in (("key_a", "key_b"), ("key_b", "key_a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(met) == 1 and isinstance(met[0], Conflict), met
