"""SQLite's write-ahead log is copied back as it grows, through the aside connection (the
app's wal_checkpoint loop), so a ledger commit on the shared connection seldom meets 1000
pages and copies them itself while every other write waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest

from proxy import ids
from proxy.billing.db import SqliteDatabase
from proxy.billing.rows import Delivered
from proxy.billing.store import Store
from tests.conftest import make_config, serve
from tests.test_batch_staging import AUTOCHECKPOINT, PAGE
from tests.test_billing_store import entry


def test_the_app_copies_the_log_back_as_requests_write_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[float] = []
    checkpoint = SqliteDatabase.checkpoint

    def counted(db: SqliteDatabase) -> None:
        copied.append(time.monotonic())
        checkpoint(db)

    monkeypatch.setattr(SqliteDatabase, "checkpoint", counted)
    with serve(make_config(tmp_path)) as running, openai.OpenAI(
            base_url=running.v1, api_key=running.new_key("wal"), max_retries=0) as client:
        started = time.monotonic()
        while time.monotonic() - started < 1.2:
            client.images.generate(model="test-image", prompt="a fox")
    during = [at for at in copied if at >= started]
    assert len(during) >= 2, copied


def test_the_log_stays_bounded_under_ledger_writes_with_checkpoints_beside(
        tmp_path: Path) -> None:
    """Checkpoints on the aside connection never restart the log while the shared one keeps
    committing: only the shared connection's own automatic checkpoint does. With it turned
    off (c08a7f2, reverted) the log grew by ~950 pages a second under load."""
    with Store(tmp_path / "switchyard.db") as store:
        stop = threading.Event()

        def checkpoints() -> None:
            while not stop.wait(0.05):
                store.db.checkpoint()

        beside = threading.Thread(target=checkpoints)
        beside.start()
        largest, marks = 0, []
        try:
            started = time.monotonic()
            while time.monotonic() - started < 2.0:
                batch = [(None, entry(ids.ordered("req_"), "key_a", billed="0.01"), None)
                         for _ in range(16)]
                store.money.write_each(batch + [Delivered(m) for m in marks])
                marks = [settle[1].request_id for settle in batch]
                largest = max(largest, (tmp_path / "switchyard.db-wal").stat().st_size)
        finally:
            stop.set()
            beside.join()
    assert largest < 2 * AUTOCHECKPOINT * PAGE, f"the log grew to {largest // PAGE} pages"
