"""The billing store on both engines: keys with limits, reservations that never overspend,
the ledger, idempotent responses and usage reports."""

from __future__ import annotations

import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.billing import db as db_module
from proxy.billing.amounts import micros, period_label, usd
from proxy.billing.idempotency import Claim, Claimed, Stored
from proxy.billing.keys import KeyLimits, digest
from proxy.billing.rows import Entry
from proxy.billing.schema import migrate
from proxy.billing.store import Store


def entry(request_id: str, key_id: str, billed: str = "0.05", outcome: str = "success",
          n: int = 1, model: str = "m", provider: str = "p", when: int | None = None) -> Entry:
    ok = outcome == "success"
    return Entry(request_id=request_id, key_id=key_id, tenant="t", model=model,
                 provider=provider, route=f"{model}/{provider}", tier="1K", n_asked=n,
                 n_delivered=n if ok else 0, billed_micros=micros(Decimal(billed)) if ok else 0,
                 upstream_micros=micros(Decimal(billed)) // 2 if ok else 0, latency_ms=1200,
                 outcome=outcome, failure=None if ok else outcome, attempts=1,
                 upstream_id="up-1", idempotency_key=None,
                 created_at=when if when is not None else int(time.time()))


def test_keys_carry_their_limits(database: str) -> None:
    limits = KeyLimits(allowed_models=("nano-banana-2",), strategy="fastest", plan="pro",
                       budget_usd=Decimal("12.5"), budget_period="monthly", rpm=60, ipm=100,
                       concurrency=4)
    with Store(database) as store:
        record, key = store.create_key("acme", tenant="acme-corp", limits=limits)
        assert store.get_key(record.id) == record
        found = store.find_key(digest(key))
        assert found is not None and found[1].limits == limits
        changed = store.update_limits(record.id, KeyLimits(budget_usd=Decimal(1)))
        assert changed is not None and store.get_key(record.id) == changed
        assert store.update_limits("key_nope", limits) is None


def test_rotation_replaces_the_secret_only(database: str) -> None:
    with Store(database) as store:
        record, old = store.create_key("acme", limits=KeyLimits(rpm=5))
        rotated = store.rotate_key(record.id)
        assert rotated is not None
        new_record, new = rotated
        assert new != old and new_record.id == record.id and new_record.limits.rpm == 5
        assert store.find_key(digest(old)) is None and store.find_key(digest(new)) is not None
        assert store.revoke_key(record.id) and store.rotate_key(record.id) is None


def test_reservations_never_overspend_under_threads(database: str) -> None:
    """100 threads reserve 0.05 against a 0.50 budget: exactly 10 get through."""
    with Store(database) as store:
        results: list[str | None] = []
        lock = threading.Lock()

        def take() -> None:
            got = store.money.reserve("key_a", "total", micros(Decimal("0.05")),
                                      micros(Decimal("0.50")))
            with lock:
                results.append(got)

        threads = [threading.Thread(target=take) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held = [r for r in results if r]
        assert len(held) == 10
        assert store.money.spent("key_a", "total") == (Decimal(0), Decimal("0.5"))


def test_settle_bills_what_was_delivered_and_release_frees_the_rest(database: str) -> None:
    with Store(database) as store:
        budget = micros(Decimal("0.10"))
        first = store.money.reserve("key_a", "total", micros(Decimal("0.10")), budget)
        assert first is not None
        assert store.money.reserve("key_a", "total", 1, budget) is None  # all held
        store.money.settle(first, entry("req_1", "key_a", billed="0.04"))
        assert store.money.spent("key_a", "total") == (Decimal("0.04"), Decimal(0))
        second = store.money.reserve("key_a", "total", micros(Decimal("0.06")), budget)
        assert second is not None
        store.money.settle(second, entry("req_2", "key_a", outcome="overloaded"))
        assert store.money.spent("key_a", "total") == (Decimal("0.04"), Decimal(0))
        failed = store.money.entry("req_2")
        assert failed is not None and failed.billed_micros == 0 and failed.outcome == "overloaded"


def test_a_request_is_written_to_the_ledger_once(database: str) -> None:
    with Store(database) as store:
        res = store.money.reserve("key_a", "total", 50_000, None)
        store.money.settle(res, entry("req_1", "key_a"))
        store.money.settle(res, entry("req_1", "key_a"))  # a retry of the same settle
        rows = store.db.query("SELECT COUNT(*), SUM(billed_micros) FROM ledger")
        assert (int(rows[0][0]), int(rows[0][1])) == (1, 50_000)
        assert store.money.spent("key_a", "total")[0] == Decimal("0.05")


def test_sweep_releases_reservations_left_by_a_crash(database: str) -> None:
    with Store(database) as store:
        store.money.reserve("key_a", "total", 70_000, 100_000)
        store.db.execute("UPDATE reservations SET created_at = created_at - 3600")
        assert store.money.sweep(older_than_s=600) == 1
        assert store.money.spent("key_a", "total") == (Decimal(0), Decimal(0))


@pytest.mark.parametrize(("period", "label"), [("total", "total"), ("monthly", "2026-11"),
                                               ("daily", "2026-11-22")])
def test_period_labels(period: str, label: str) -> None:
    assert period_label(period, 1795_300_000 + 10_000) == label


def test_micros_round_trip() -> None:
    assert micros(Decimal("0.0672")) == 67_200 and usd(67_200) == Decimal("0.0672")
    assert micros(Decimal("0.0000005")) == 1


def test_idempotency_claims(database: str) -> None:
    first, second = Claim("key_a", "k1", "h1"), Claim("key_a", "k1", "h2")
    with Store(database) as store:
        idem = store.idempotency
        assert idem.claim(first, "fp") == (Claimed.NEW, None)
        assert idem.claim(second, "fp") == (Claimed.BUSY, None)
        assert idem.claim(second, "other") == (Claimed.MISMATCH, None)
        assert idem.claim(Claim("key_b", "k1", "h3"), "fp") == (Claimed.NEW, None), \
            "keys never share"
        stored = Stored(200, {"x-request-id": "req_1"}, b'{"data": []}')
        idem.complete(first, stored)
        assert idem.claim(second, "fp") == (Claimed.DONE, stored)
        assert idem.claim(second, "fp", now=time.time() + 25 * 3600)[0] is Claimed.NEW


def test_an_abandoned_claim_can_be_taken_again(database: str) -> None:
    with Store(database) as store:
        idem = store.idempotency
        idem.claim(Claim("key_a", "k1", "h1"), "fp")
        idem.abandon(Claim("key_a", "k1", "h1"))
        assert idem.claim(Claim("key_a", "k1", "h2"), "fp")[0] is Claimed.NEW


def test_usage_groups_and_filters(database: str) -> None:
    day = 86400 * 20_000  # 2024-10-04
    with Store(database) as store:
        for i, (key, model, provider, billed, outcome) in enumerate([
                ("key_a", "m1", "p1", "0.05", "success"), ("key_a", "m1", "p2", "0.07", "success"),
                ("key_a", "m2", "p1", "0.10", "success"), ("key_b", "m1", "p1", "0.05", "success"),
                ("key_a", "m1", "p1", "0", "timeout")]):
            store.money.settle(None, entry(f"req_{i}", key, billed, outcome, model=model,
                                           provider=provider, when=day + i * 60))
        store.money.settle(None, entry("req_late", "key_a", "1.00", when=day + 86400))
        by_model = store.usage.report(["model"], key_id="key_a", start=day, end=day + 86400)
        assert [(r.group["model"], r.requests, r.succeeded, r.billed_usd) for r in by_model] == \
            [("m1", 3, 2, Decimal("0.12")), ("m2", 1, 1, Decimal("0.1"))]
        by_day = store.usage.report(["day"])
        assert [(r.group["day"], r.requests) for r in by_day] == [("2024-10-04", 5),
                                                                   ("2024-10-05", 1)]
        by_key = store.usage.report(["key", "provider"], end=day + 86400)
        assert {(r.group["key"], r.group["provider"]): r.images for r in by_key} == {
            ("key_a", "p1"): 2, ("key_a", "p2"): 1, ("key_b", "p1"): 1}
        with pytest.raises(ValueError, match="unknown group"):
            store.usage.report(["colour"])


def test_an_old_sqlite_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant TEXT "
                     "NOT NULL, key_hash TEXT NOT NULL UNIQUE, hint TEXT NOT NULL, created_at "
                     "INTEGER NOT NULL, revoked_at INTEGER); INSERT INTO api_keys VALUES "
                     "('key_1', 'old', 'old', 'h', 'sy-…', 1, NULL); PRAGMA user_version=1;")
    db.close()
    with Store(path) as store:
        (record,) = store.list_keys()
        assert record.id == "key_1" and record.limits == KeyLimits()


def test_a_later_outcome_replaces_a_failure_but_never_a_success(database: str) -> None:
    with Store(database) as store:
        store.money.settle(None, entry("job_1", "key_a", outcome="cancelled"))
        store.money.settle(None, entry("job_1", "key_a", billed="0.05"))
        store.money.settle(None, entry("job_1", "key_a", outcome="timeout"))
        store.money.settle(None, entry("job_1", "key_a", billed="0.07"))
        (row,) = store.db.query("SELECT outcome, billed_micros FROM ledger")
        assert (row[0], int(row[1])) == ("success", 50_000)


def test_a_key_without_a_budget_settles_into_spent_without_a_reservation(database: str) -> None:
    with Store(database) as store:
        store.money.settle(None, entry("req_1", "key_a", billed="0.05"), "2026-11")
        store.money.settle(None, entry("req_2", "key_a", outcome="timeout"), "2026-11")
        assert store.money.spent("key_a", "2026-11") == (Decimal("0.05"), Decimal(0))


def test_replicas_opening_a_fresh_database_at_once_all_start(database: str) -> None:
    """A fleet's first start: every replica migrates the empty database at once; one does,
    the rest wait for it and find it done (none fails on the schema's own table)."""
    replicas = [db_module.connect(database) for _ in range(6)]
    start, failed = threading.Barrier(len(replicas)), []

    def replica(db: db_module.Database) -> None:
        start.wait()
        try:
            migrate(db)
        except Exception as exc:
            failed.append(exc)

    threads = [threading.Thread(target=replica, args=(db,)) for db in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for db in replicas:
        db.close()
    assert failed == []
    with Store(database) as store:
        assert store.db.query("SELECT COUNT(*) FROM schema_version")[0][0] == 1
