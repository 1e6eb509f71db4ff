"""A write that meets another process's SQLite write lock tries again every LOCK_POLL_S until
the lock is free (up to the busy timeout), not after SQLite's own busy handler's sleeps (1, 2,
5 ... 100 ms), which under `serve --workers 2` kept one worker's writer waiting while the other
took the lock again and again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.billing import db as db_module
from proxy.billing.store import Store


class Holder:
    """Another process's write lock (another connection's BEGIN EXCLUSIVE), released after the
    waiting call has slept `polls` times."""

    def __init__(self, path: Path, polls: int) -> None:
        self.other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.other.execute("BEGIN EXCLUSIVE")
        self.polls, self.slept = polls, []
        self._sleep = db_module.time.sleep

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if len(self.slept) == self.polls:
            self.other.execute("ROLLBACK")
        self._sleep(seconds)


@pytest.mark.parametrize("write", ["transaction", "statement"])
def test_a_write_waits_for_another_process_s_lock_in_short_polls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
    path = tmp_path / "switchyard.db"
    with Store(path) as store:
        holder = Holder(path, polls=40)
        monkeypatch.setattr(db_module.time, "sleep", holder.sleep)
        if write == "transaction":
            store.create_key("k")  # BEGIN IMMEDIATE
        else:
            store.db.execute("DELETE FROM api_keys WHERE id = 'none'")
        assert len(holder.slept) == 40 and set(holder.slept) == {db_module.LOCK_POLL_S}
        holder.other.close()
