"""A batch's creation keeps off SQLite's shared connection, which every request's ledger write
waits for: its items are written in short steps (batches.py: stage), its input file is read
aside, and its answer counts nothing. What that is worth is shown by `switchyard bench
batch-create`; here, the properties it rests on."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.billing import batches
from proxy.billing.batches import Batches
from proxy.billing.db import Cursor
from proxy.billing.store import Store
from tests.conftest import make_config, serve
from tests.test_batches import jsonl

ENDPOINT = "/v1/images/generations"
PAGE = 4096  # SQLite's default page size
AUTOCHECKPOINT = 1000  # pages: SQLite's default wal_autocheckpoint
PSYCOPG_CACHED = 50  # psycopg._queries.MAX_CACHED_STATEMENT_PARAMS


def items(count: int) -> list[tuple[str, bytes]]:
    return [(f"line-{i}", b'{"model": "test-image", "prompt": "p%d"}' % i)
            for i in range(count)]


def staged_ids(store: Store, batch_id: str) -> list[str]:
    """The batch's job ids in the order of its lines."""
    rows = store.db.query("SELECT custom_id, id FROM jobs WHERE batch_id = ?", (batch_id,))
    return [job_id for _, job_id in sorted(rows, key=lambda row: int(row[0].split("-")[1]))]


def test_a_batchs_item_ids_follow_its_lines(database: str) -> None:
    """Ordered ids put a step's rows on a few neighbouring pages of the jobs' primary key
    index (random ones dirtied a page per row); they still look like any job id, and two
    batches share none."""
    with Store(database) as store:
        key = store.create_key("big")[0]
        first, second = (store.batches.stage(key.id, ENDPOINT, "file-x", "24h", None,
                                             items(2 * batches.STAGE_ROWS + 5), b"")
                         for _ in range(2))
        ids, others = staged_ids(store, first.id), staged_ids(store, second.id)
    assert len(ids) == 2 * batches.STAGE_ROWS + 5
    assert ids == sorted(ids), "ids in the order of the lines"
    assert all(re.fullmatch(r"imgjob_[0-9a-f]{24}", job_id) for job_id in ids + others)
    assert not set(ids) & set(others)


def test_staging_copies_the_log_back_as_it_goes(tmp_path: Path) -> None:
    """SQLite: every step's pages go back to the database file before the next step, off the
    shared connection, so the write-ahead log never grows to wal_autocheckpoint's 1000 pages;
    a commit that found it there copied them itself, holding the connection (and every request
    waiting for it) for tens of milliseconds. The log file's size is its high-water mark."""
    with Store(tmp_path / "switchyard.db") as store:
        key = store.create_key("big")[0]
        store.batches.stage(key.id, ENDPOINT, "file-x", "24h", None,
                            items(60 * batches.STAGE_ROWS), b"")
        wal = (tmp_path / "switchyard.db-wal").stat().st_size  # closing removes it
    assert wal < AUTOCHECKPOINT * PAGE / 4, f"the log grew to {wal // PAGE} pages"


class Counting:
    """A transaction's cursor that counts each statement's parameters."""

    def __init__(self, cur: Cursor, counts: list[int]) -> None:
        self._cur, self._counts = cur, counts

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        self._counts.append(len(args))
        return self._cur.execute(sql, args)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._cur.query(sql, args)


def test_postgres_statements_stay_within_psycopgs_cache(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg converts a statement's placeholders once, then from its cache, only if it has
    at most 50 parameters: a 100-row INSERT (900) was converted again every step, 10 ms of
    Python each holding the server's GIL. Every item is still written."""
    counts: list[int] = []
    with Store(postgres_url) as store:
        key = store.create_key("big")[0]
        transaction = store.db.transaction

        @contextlib.contextmanager
        def counted() -> Iterator[Cursor]:
            with transaction() as cur:
                yield Counting(cur, counts)

        monkeypatch.setattr(store.db, "transaction", counted)
        batch = store.batches.stage(key.id, ENDPOINT, "file-x", "24h", None,
                                    items(2 * batches.STAGE_ROWS + 3), b"")
        assert len(staged_ids(store, batch.id)) == 2 * batches.STAGE_ROWS + 3
    assert counts and max(counts) <= PSYCOPG_CACHED, counts


def test_a_file_is_read_beside_a_transaction_on_the_shared_connection(tmp_path: Path) -> None:
    """SQLite: a file's content (a 50,000-line input file: 6 MB) is read through a connection
    of its own; on the shared one its read held every other call 20-40 ms."""
    with Store(tmp_path / "switchyard.db") as store:
        key = store.create_key("big")[0]
        stored = store.batches.add_file(key.id, "batch", "in.jsonl", b"x" * 300_000)
        inside, leave = threading.Event(), threading.Event()
        waited_out: list[bool] = []

        def hold() -> None:
            with store.db.transaction():
                inside.set()
                waited_out.append(not leave.wait(5))

        holder = threading.Thread(target=hold)
        holder.start()
        inside.wait()
        try:
            found = store.batches.file(stored.id, key.id)
        finally:
            leave.set()
            holder.join()
    assert found is not None and found.content == b"x" * 300_000
    assert waited_out == [False], "read while the transaction was still open"


def test_a_create_answers_without_counting_its_items(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch just opened has run nothing: the create's answer (with an Idempotency-Key
    too) counts none of its items, a query that held SQLite's shared connection 10-20 ms at
    50,000. Retrieving it still counts them."""
    counted: list[str] = []
    count = Batches.counts
    monkeypatch.setattr(Batches, "counts",
                        lambda self, batch_id: counted.append(batch_id) or count(self, batch_id))
    monkeypatch.setattr(Batches, "open_batches", lambda self: [])  # finalizing counts nothing
    content = jsonl([{"model": "test-image", "prompt": f"p{i}"} for i in range(3)])
    with serve(make_config(tmp_path / "data")) as running, \
            openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        uploaded = sdk.files.create(file=("in.jsonl", content), purpose="batch")
        made = [sdk.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                   completion_window="24h", extra_headers=headers)
                for headers in ({}, {"Idempotency-Key": "once"})]
        assert not counted
        assert [(b.request_counts.total, b.request_counts.completed)
                for b in made if b.request_counts] == [(3, 0), (3, 0)]
        sdk.batches.retrieve(made[0].id)
        assert counted == [made[0].id]
