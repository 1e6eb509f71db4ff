"""SQLite's write-ahead log is copied back as it grows, through the aside connection (the
app's wal_checkpoint loop), so a ledger commit on the shared connection seldom meets 1000
pages and copies them itself while every other write waits."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from proxy.billing.db import SqliteDatabase
from tests.conftest import make_config, serve


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
