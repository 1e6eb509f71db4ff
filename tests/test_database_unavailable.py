"""A database that cannot answer, in process: DatabaseUnavailable on both engines, a 503 in
OpenAI's shape, settles that bill once whatever happens to their connection, and the writes
kept while the database is away (a hold's release, an idempotent response) done once it is
back. The real outages (terminated backends, a PostgreSQL restart, a locked SQLite file under
a running server) are in test_database_outages.py."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest

from proxy.api.errors import internal
from proxy.billing import db as db_module
from proxy.billing import postgres
from proxy.billing.amounts import micros
from proxy.billing.db import ConnectionLost, Cursor, DatabaseUnavailable
from proxy.billing.idempotency import Claim, Claimed, Idempotency, Stored
from proxy.billing.keys import KeyLimits, KeyRecord
from proxy.billing.money import Money
from proxy.billing.rows import Delivered, Settle
from proxy.billing.store import Store
from tests.conftest import free_socket, make_config, serve
from tests.databases import POSTGRES_URL
from tests.test_billing_store import entry


class Flaky:
    """A database that refuses every call while `down`, or loses the connection just after
    committing the next transaction (`lose_next`)."""

    def __init__(self, db: db_module.Database) -> None:
        self.db = db
        self.engine = db.engine
        self.down = False
        self.lose_next = False

    def _check(self) -> None:
        if self.down:
            raise DatabaseUnavailable("test: the database is away")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        self._check()
        return self.db.execute(sql, args)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._check()
        return self.db.query(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        self._check()
        with self.db.transaction() as cur:
            yield cur
        if self.lose_next:
            self.lose_next = False
            raise ConnectionLost("test: committed, then the answer was lost")

    def script(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[Any, ...]]:
        """PostgreSQL's one-round-trip transaction (money's path there), lost alike."""
        self._check()
        rows: list[tuple[Any, ...]] = self.db.script(statements)  # type: ignore[attr-defined]
        if self.lose_next:
            self.lose_next = False
            raise ConnectionLost("test: committed, then the answer was lost")
        return rows

    def ping(self, timeout_s: float) -> None:
        self._check()

    def clock(self) -> float:
        return self.db.clock()

    def close(self) -> None:
        self.db.close()


def held_on_flaky(store: Store) -> tuple[KeyRecord, Flaky, Money, str | None]:
    """A key with a $10 budget, its money on a Flaky database, and a $0.05 hold on it."""
    key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(10)))[0]
    flaky = Flaky(store.db)
    money = Money(flaky, store.deferred)
    return key, flaky, money, money.reserve(key.id, "total", micros(Decimal("0.05")),
                                            micros(Decimal(10)))


def spent_and_held(store: Store, key_id: str) -> tuple[Decimal, Decimal]:
    return store.money.spent(key_id, "total")


def test_a_settle_whose_answer_was_lost_is_tried_again_and_bills_once(database: str) -> None:
    with Store(database) as store:
        key, flaky, money, held = held_on_flaky(store)
        flaky.lose_next = True  # committed, then ConnectionLost: settled again, a no-op
        money.settle(held, entry("req_1", key.id, "0.05"))
        assert spent_and_held(store, key.id) == (Decimal("0.05"), Decimal(0))
        # Settling a billed request again (a job that ran twice) bills nothing more and
        # gives the second hold back.
        again = money.reserve(key.id, "total", micros(Decimal("0.05")), micros(Decimal(10)))
        money.settle(again, entry("req_1", key.id, "0.05"))
        money.settle(None, entry("req_1", key.id, "0.05"), "total")
        assert spent_and_held(store, key.id) == (Decimal("0.05"), Decimal(0))
        assert len(store.deferred) == 0


def test_a_hold_whose_answer_was_lost_is_given_back_and_taken_once_more(
        database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal("0.05")))[0]
        flaky = Flaky(store.db)
        money = Money(flaky, store.deferred)
        flaky.lose_next = True  # the first hold is committed, its answer lost
        held = money.reserve(key.id, "total", micros(Decimal("0.05")), micros(Decimal("0.05")))
        assert held is not None  # the lost one was given back: the budget still covers it
        assert spent_and_held(store, key.id) == (Decimal(0), Decimal("0.05"))
        assert store.db.query("SELECT id FROM reservations") == [(held,)]


def test_a_refused_settle_leaves_no_hold_and_no_bill_once_the_database_is_back(
        database: str) -> None:
    with Store(database) as store:
        key, flaky, money, held = held_on_flaky(store)
        flaky.down = True
        with pytest.raises(DatabaseUnavailable):
            money.settle(held, entry("req_1", key.id, "0.05"))
        with pytest.raises(DatabaseUnavailable):
            store.deferred.retry()  # still away: kept
        assert len(store.deferred) == 1
        flaky.down = False
        assert store.deferred.retry() == 1
        assert spent_and_held(store, key.id) == (Decimal(0), Decimal(0))
        row = store.money.entry("req_1")
        assert row is not None and row.outcome == "database_unavailable"
        assert row.billed_micros == 0 and row.upstream_micros > 0
        # The client retried under a new request id: billed once, for that one.
        money.settle(None, entry("req_2", key.id, "0.05"), "total")
        assert spent_and_held(store, key.id) == (Decimal("0.05"), Decimal(0))


def test_settles_written_together_bill_each_once_and_are_refused_together(
        database: str) -> None:
    with Store(database) as store:
        key, flaky, money, held = held_on_flaky(store)
        writes: list[Settle | Delivered] = [
            (held, entry("req_1", key.id, "0.05"), "total"),
            (None, entry("req_2", key.id, "0.02"), "total"),
            (None, entry("req_2", key.id, "0.02"), "total"),  # a retry, in the same batch
            Delivered("req_1")]
        assert money.write_each(writes) == [None] * 4
        assert spent_and_held(store, key.id) == (Decimal("0.07"), Decimal(0))
        assert store.db.query("SELECT delivered_at FROM ledger WHERE request_id = 'req_1'")[0][0]
        flaky.down = True
        refused = money.write_each([(None, entry("req_3", key.id), "total"),
                                    (None, entry("req_4", key.id), "total"),
                                    Delivered("req_2")])
        assert all(isinstance(exc, DatabaseUnavailable) for exc in refused[:2])
        assert refused[2] is None  # a mark is kept quietly, as alone
        assert len(store.deferred) == 3
        flaky.down = False
        assert store.deferred.retry() == 3
        assert spent_and_held(store, key.id) == (Decimal("0.07"), Decimal(0))
        assert store.db.query("SELECT delivered_at FROM ledger WHERE request_id = 'req_2'")[0][0]


def test_a_settle_committed_then_cut_off_is_no_bill_for_the_503_the_client_got(
        database: str) -> None:
    """The settle commits, its answer is lost, and the database is away for every retry: the
    client hears 503. Once the database is back the bill is taken back (it was kept: a retry
    by the client then paid twice)."""
    with Store(database) as store:
        key, flaky, money, held = held_on_flaky(store)
        flaky.lose_next = True
        real = flaky.transaction

        @contextlib.contextmanager
        def then_away() -> Iterator[Cursor]:
            try:
                with real() as cur:
                    yield cur
            except ConnectionLost:
                flaky.down = True
                raise

        flaky.transaction = then_away  # type: ignore[method-assign]
        with pytest.raises(DatabaseUnavailable):
            money.settle(held, entry("req_1", key.id, "0.05"), "total")
        assert spent_and_held(store, key.id) == (Decimal("0.05"), Decimal(0))  # committed
        flaky.down = False
        assert store.deferred.retry() == 1
        assert spent_and_held(store, key.id) == (Decimal(0), Decimal(0))
        row = store.money.entry("req_1")
        assert row is not None and row.outcome == "database_unavailable"
        assert row.billed_micros == 0


def test_idempotent_responses_and_delivered_marks_wait_for_the_database(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0]
        store.money.settle(None, entry("req_1", key.id), "total")
        claim = Claim(key.id, "idem", "holder")
        assert store.idempotency.claim(claim, "fp")[0] is Claimed.NEW
        flaky = Flaky(store.db)
        flaky.down = True  # the database goes away after the claim
        idempotency = Idempotency(flaky, store.deferred)
        idempotency.complete(claim, Stored(200, {"a": "b"}, b"{}"))  # no raise
        Money(flaky, store.deferred).delivered("req_1")
        assert len(store.deferred) == 2
        flaky.down = False
        assert store.deferred.retry() == 2
        assert store.idempotency.claim(Claim(key.id, "idem", "retry"), "fp")[0] is \
            Claimed.DONE
        delivered = store.db.query("SELECT delivered_at FROM ledger WHERE request_id = 'req_1'")
        assert delivered[0][0] is not None


def test_a_locked_sqlite_file_is_unavailable_after_the_busy_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_S", 0.3)
    path = tmp_path / "switchyard.db"
    with Store(path) as store, locked(path):
        assert store.count_keys() == 0  # reads still work in WAL mode
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="SQLITE_BUSY"):
            store.create_key("k")  # a write waits for the busy timeout, then gives up
        with pytest.raises(DatabaseUnavailable):
            store.ping(0.2)
        assert time.monotonic() - started < 3
    with Store(path) as store:
        store.ping(0.2)
        store.create_key("k")  # the connection is usable again


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process's write lock on the database file, as `BEGIN EXCLUSIVE` holds it."""
    other = sqlite3.connect(path, isolation_level=None, timeout=10)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_database_error_is_a_503_in_openais_shape() -> None:
    error = internal(DatabaseUnavailable("PostgreSQL is unavailable (AdminShutdown)"))
    assert (error.status, error.type, error.code) == (503, "server_error",
                                                      "database_unavailable")
    assert error.headers["retry-after"] == "2" and "database" in error.message
    assert internal(RuntimeError("x")).status == 500


def test_requests_while_sqlite_is_locked_get_503_and_nothing_is_billed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_S", 0.3)
    config = make_config(tmp_path / "data")
    with serve(config) as server:
        key = server.new_key("k", KeyLimits(budget_usd=Decimal(5)))
        sdk = openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0)
        sdk.images.generate(model="test-image", prompt="warm the key cache")
        with locked(config.database_path):
            with pytest.raises(openai.InternalServerError) as refused:
                sdk.images.generate(model="test-image", prompt="while locked")
            ready = httpx.get(server.base_url + "/readyz")
        response = refused.value.response
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "database_unavailable"
        assert ready.status_code == 503 and "SQLite" in ready.json()["problems"][0]
        assert httpx.get(server.base_url + "/readyz").status_code == 200
        sdk.images.generate(model="test-image", prompt="after")
        deadline = time.monotonic() + 5
        with server.store() as store:
            (record,) = store.list_keys()
            while store.money.spent(record.id, "total")[1] and time.monotonic() < deadline:
                time.sleep(0.1)  # the refused request's hold goes with the deferred writes
            rows = store.db.query("SELECT request_id, outcome, billed_micros FROM ledger")
            spent, held = store.money.spent(record.id, "total")
    billed = [r for r in rows if r[2]]
    assert len(billed) == 2 and all(r[1] == "success" for r in billed)
    assert held == 0 and spent == sum(Decimal(r[2]) for r in billed) / 1_000_000


def _admin() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(POSTGRES_URL, autocommit=True)


def test_terminated_postgres_connections_are_replaced_before_anyone_notices(
        postgres_url: str) -> None:
    name = "sy_test_" + secrets.token_hex(4)
    with Store(f"{postgres_url}&application_name={name}") as store, _admin() as admin:
        store.create_key("k")
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = %s", (name,)).fetchone()
        assert killed is not None and killed[0] == postgres.POOL_SIZE
        time.sleep(0.2)
        started = time.monotonic()
        for _ in range(3 * postgres.POOL_SIZE):
            assert store.count_keys() == 1
        store.ping(1.0)
        assert time.monotonic() - started < 2


def test_a_postgres_connection_lost_mid_transaction_is_connection_lost(
        postgres_url: str) -> None:
    name = "sy_test_" + secrets.token_hex(4)
    with Store(f"{postgres_url}&application_name={name}") as store, _admin() as admin:
        with pytest.raises(ConnectionLost), store.db.transaction() as cur:
            cur.execute("SELECT 1")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "application_name = %s AND state <> 'idle'", (name,))
            time.sleep(0.1)
            cur.execute("SELECT 1")
        assert store.count_keys() == 0  # and the next call gets a live connection


def test_postgres_that_does_not_answer_is_unavailable_without_the_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT_S", 1)
    sock = free_socket()  # bound, never listening: connections are refused
    url = f"postgresql://switchyard:hunter2@127.0.0.1:{sock.getsockname()[1]}/x"
    try:
        with pytest.raises(DatabaseUnavailable) as refused:
            db_module.connect(url)
    finally:
        sock.close()
    assert "hunter2" not in str(refused.value) and "PostgreSQL" in str(refused.value)
