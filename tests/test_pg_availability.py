"""A PostgreSQL that takes no writes (the old primary back as a standby after a failover, or a
database set read-only) is a database away, as a down one is: a request that would write
answers 503 `database_unavailable` (billed nothing), never a 500, and /readyz says not ready.
Before (helper-44, helper-46): psycopg's ReadOnlySqlTransaction (an InternalError) escaped as a
500 `internal_error` from the ledger's settle and the image store, and readiness, a bare
SELECT 1, said ready. And backends ended under connections in use are one outage in the log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from proxy.billing import postgres
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.images import Images
from proxy.billing.postgres import PostgresDatabase
from proxy.billing.store import Store
from tests.conftest import make_config, serve
from tests.databases import POSTGRES_URL, own_database, postgres_url

__all__ = ["postgres_url"]  # a fixture


def test_a_read_only_server_is_unavailable_to_writes_and_not_ready(postgres_url: str) -> None:
    with Store(postgres_url):
        pass  # the schema, made while it takes writes
    read_only = postgres_url + "%20-cdefault_transaction_read_only%3Don"
    db = PostgresDatabase(read_only, size=1)
    try:
        with pytest.raises(DatabaseUnavailable):
            Images(db, 3600).put("a.png", b"\x89PNG", "image/png")
        with pytest.raises(DatabaseUnavailable, match="takes no writes"):
            db.ping(1.0)
    finally:
        db.close()
    writable = PostgresDatabase(postgres_url, size=1)
    try:
        writable.ping(1.0)
    finally:
        writable.close()


@pytest.fixture
def database() -> Iterator[str]:
    with own_database("sy_read_only") as url:
        yield url


def _read_only(url: str, on: bool) -> None:
    """The database turns read-only (or back) for every new session; the sessions it has are
    ended, as a failover ends them."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = "
                      f"{'on' if on else 'off'}")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_requests_while_the_database_is_read_only_answer_503(tmp_path: Path,
                                                            database: str) -> None:
    with serve(make_config(tmp_path / "data", database_url=database)) as server:
        auth = {"authorization": f"Bearer {server.new_key('k')}"}
        asks = [{"model": "test-image", "prompt": "p", "response_format": "url"},
                {"model": "test-image", "prompt": "p"}]
        for ask in asks:
            assert httpx.post(server.v1 + "/images/generations", json=ask, headers=auth,
                              timeout=30).status_code == 200
        _read_only(database, True)
        try:
            for ask in asks:
                answer = httpx.post(server.v1 + "/images/generations", json=ask, headers=auth,
                                    timeout=30)
                assert answer.status_code == 503, (ask, answer.status_code, answer.text)
                assert answer.json()["error"]["code"] == "database_unavailable"
            assert httpx.get(server.base_url + "/readyz", timeout=10).status_code == 503
        finally:
            _read_only(database, False)
        deadline = time.monotonic() + 10  # its connections made again reach a writable server
        while httpx.get(server.base_url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "not ready again"
            time.sleep(0.1)
        assert httpx.post(server.v1 + "/images/generations", json=asks[1], headers=auth,
                          timeout=30).status_code == 200


def test_an_images_stream_whose_settle_finds_the_database_read_only_answers_503(
        tmp_path: Path, database: str) -> None:
    """The run of an images stream ends before its first byte (well before the first
    keep-alive) and its settle cannot be written: a plain 503 in OpenAI's shape, as chat and
    Gemini streams answer (helper-49: uvicorn's text/plain 500, with no request id)."""
    config = make_config(tmp_path / "data", database_url=database, simulation_time_scale=1.5)
    with serve(config) as server:
        auth = {"authorization": f"Bearer {server.new_key('k')}"}
        turning = threading.Timer(0.4, _read_only, (database, True))
        turning.start()
        try:
            answer = httpx.post(server.v1 + "/images/generations", headers=auth, timeout=30,
                                json={"model": "test-image", "prompt": "p", "stream": True,
                                      "route": {"only": ["sim-cheap"]}})
        finally:
            turning.join()
            _read_only(database, False)
        assert answer.status_code == 503, (answer.status_code, answer.text[:200])
        assert answer.json()["error"]["code"] == "database_unavailable"
        assert answer.headers["retry-after"] == "2" and "x-request-id" in answer.headers


def test_one_termination_is_one_outage_in_the_log(database: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """pg_terminate_backend with a connection in use: another caller replaces its stale idle
    connection and the database is back; then the one in use fails too. One outage, said once
    (helper-48: each connection in use at the blip logged an unavailable/available pair)."""
    db = PostgresDatabase(database, size=2)
    try:
        db.query("SELECT 1")
        holding, terminated, done = threading.Event(), threading.Event(), threading.Event()
        failed: list[BaseException] = []

        def in_a_transaction() -> None:
            try:
                with db.transaction() as cur:
                    cur.query("SELECT 1")
                    holding.set()
                    terminated.wait(10)
                    cur.query("SELECT 2")  # its backend was ended meanwhile
            except DatabaseUnavailable as exc:
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=in_a_transaction).start()
        assert holding.wait(10)
        with caplog.at_level(logging.WARNING, logger="switchyard.database"):
            _terminate(database)
            assert db.query("SELECT 3") == [(3,)]  # the other connection, replaced
            terminated.set()
            assert done.wait(10) and failed
            assert db.query("SELECT 4") == [(4,)]
        assert _outages(caplog) == 1, caplog.text
    finally:
        db.close()


def _outages(caplog: pytest.LogCaptureFixture) -> int:
    """How many outages the database's log said."""
    return sum("is unavailable" in record.getMessage() for record in caplog.records
               if record.name == "switchyard.database")


def _terminate(url: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (url.rsplit("/", 1)[1],))


def test_a_second_outage_is_said_again(database: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Two separate outages, the second breaking the connection made after the first: both
    said, and the second's calls fail fast (helper-50: the connection made in the recovery was
    taken for a casualty of the first, so the second went unsaid and its first call waited
    5 s)."""
    db = PostgresDatabase(database, size=1)
    try:
        with caplog.at_level(logging.WARNING, logger="switchyard.database"):
            for _ in range(2):
                db.query("SELECT 1")
                time.sleep(0.1)
                _terminate(database)
                assert db.query("SELECT 2") == [(2,)]
        assert _outages(caplog) == 2, caplog.text
    finally:
        db.close()


def test_an_outage_after_a_busy_pool_is_said(database: str, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection came in time (the pool busy, the server up): said as an outage. A later
    real one is said too, though its connection was made before the first (helper-51: taken
    for a casualty of the first, it went unsaid, and its calls waited 5 s each)."""
    db = PostgresDatabase(database, size=1)
    try:
        db.query("SELECT 1")
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with db.transaction() as cur:
                cur.query("SELECT 1")
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(10)
        monkeypatch.setattr(postgres, "WAIT_S", 0.3)
        with caplog.at_level(logging.WARNING, logger="switchyard.database"):
            with pytest.raises(DatabaseUnavailable):
                db.query("SELECT 2")  # no connection came
            release.set()
            holder.join(10)
            assert db.query("SELECT 3") == [(3,)]
            _terminate(database)
            assert db.query("SELECT 4") == [(4,)]
        assert _outages(caplog) == 2, caplog.text
    finally:
        db.close()
