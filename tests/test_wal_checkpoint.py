"""A server on SQLite copies the write-ahead log back on its aside connection every second:
no commit on the shared connection does it itself (one in about every 3 s of ledger writes
did, holding every other call behind the lock for 15-20 ms)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from proxy.billing.db import SqliteDatabase
from tests.serving import Served

ROWS = 1500  # 4 KB each: past wal_autocheckpoint's 1000 pages


def log_pages(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size // 4096 if wal.exists() else 0


def test_handed_off_commits_leave_the_log_to_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = SqliteDatabase(path)
    try:
        db.hand_off_checkpoints()
        db.execute("CREATE TABLE t (v BLOB)")
        for _ in range(ROWS):  # a commit each, as the ledger's
            db.execute("INSERT INTO t VALUES (zeroblob(4000))")
        grown = log_pages(path)
        assert grown > ROWS  # no commit copied the log back and restarted it
        db.checkpoint()
        db.execute("INSERT INTO t VALUES (zeroblob(4000))")  # restarts the log from its start
        db.checkpoint()
        (row,) = db.query("PRAGMA wal_checkpoint(PASSIVE)")
        assert row[0] == 0 and row[1] == row[2] and row[1] < 10  # all copied back, log reused
    finally:
        db.close()


def test_a_served_process_copies_the_log_back_on_its_own(tmp_path: Path) -> None:
    """Another connection's writes (which copy nothing back themselves) reach the database
    file within seconds of an idle server: its checkpoint runs every second."""
    with Served(tmp_path / "data") as served:
        assert httpx.get(served.base + "/readyz").status_code == 200
        path = tmp_path / "data" / "switchyard.db"
        database = SqliteDatabase(path)
        try:
            database.hand_off_checkpoints()
            database.execute("CREATE TABLE IF NOT EXISTS probe (v BLOB)")
            before = path.stat().st_size
            for _ in range(ROWS):
                database.execute("INSERT INTO probe VALUES (zeroblob(4000))")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and path.stat().st_size < before + ROWS * 4000:
                time.sleep(0.1)
            assert path.stat().st_size >= before + ROWS * 4000
        finally:
            database.close()
