"""A key's cap on queued work (max_queued_per_key), and batches written in steps.

Through a real `switchyard serve` and the official SDK: past the cap an async request and a
batch get 429 in OpenAI's shape naming the limit, nothing is queued or billed, and another
key is unaffected. On both engines: a batch's items are claimed only once it is opened, a
half-written one is discarded, and the cap counts a batch still being written.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from proxy.billing.db import Cursor
from proxy.billing.queue_cap import QueueFull
from proxy.billing.store import Store
from tests.fakes.counting_host import MODEL
from tests.test_fair_scheduling import ENDPOINT, started

BODY = orjson.dumps({"model": "test-image", "prompt": "x"})


def queue_async(sdk: openai.OpenAI) -> int:
    raw = sdk.images.with_raw_response.generate(model=MODEL, prompt="later",
                                                extra_headers={"Prefer": "respond-async"})
    return raw.status_code


def test_a_key_past_its_cap_gets_429_and_nothing_is_queued_or_billed(tmp_path: Path) -> None:
    with started(tmp_path, delay_s=60, env={"SWITCHYARD_MAX_QUEUED_PER_KEY": "5"}) as setup:
        full, other = setup.key("full"), setup.key("other")
        setup.batch(full, 4)
        sdk = setup.client(full)
        assert queue_async(sdk) == 202, "4 items and 1 job: exactly at the cap"
        with pytest.raises(openai.RateLimitError) as refused_job:
            queue_async(sdk)
        with pytest.raises(openai.RateLimitError) as refused_batch:
            setup.batch(full, 2)
        assert queue_async(setup.client(other)) == 202, "another key has room of its own"
        for refused, param in ((refused_job, None), (refused_batch, "input_file_id")):
            error = refused.value.response.json()["error"]
            print(f"\n429: {error}")
            assert set(error) == {"message", "type", "param", "code"}
            assert (error["code"], error["type"], error["param"]) == \
                ("queue_limit_exceeded", "requests", param)
            assert "max_queued_per_key" in error["message"] and "5" in error["message"]
        with Store(setup.database) as store:
            key_id = store.db.query("SELECT id FROM api_keys WHERE name = 'full'")[0][0]
            jobs = store.db.query("SELECT COUNT(*) FROM jobs WHERE key_id = ?", (key_id,))
            batches = store.db.query("SELECT COUNT(*) FROM batches WHERE key_id = ?",
                                     (key_id,))
            billed = store.db.query("SELECT COUNT(*) FROM ledger WHERE key_id = ?", (key_id,))
        assert (jobs[0][0], batches[0][0], billed[0][0]) == (5, 1, 0)
        assert len(sdk.batches.list().data) == 1


def test_a_batch_runs_only_once_opened_and_a_discarded_one_leaves_nothing(
        database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        items = [(f"item-{i}", BODY) for i in range(1200)]
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items, b"")
        assert staged.status == "validating"
        assert store.jobs.claim_many(600, 10) == [], "an item of a batch being written ran"
        opened = store.batches.open(staged)
        assert opened.status == "in_progress"
        assert store.batches.get(staged.id).status == "in_progress"  # type: ignore[union-attr]
        assert len(store.jobs.claim_many(600, 10)) == 10
        dropped = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items[:3], b"")
        store.batches.discard(dropped.id)
        assert store.batches.get(dropped.id) is None
        assert store.db.query("SELECT COUNT(*) FROM jobs WHERE batch_id = ?",
                              (dropped.id,))[0][0] == 0
        store.batches.discard(opened.id)
        assert store.batches.get(opened.id) is not None, "an opened batch is never discarded"


def test_a_batch_a_crash_left_half_written_is_discarded_later(database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k")[0].id
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, [("a", BODY)], b"")
        assert store.batches.discard_stale() == 0, "a batch being written is left alone"
        assert store.batches.discard_stale(now=time.time() + 2 * 3600) == 1
        assert store.batches.get(staged.id) is None


def test_the_cap_counts_jobs_and_a_batch_still_being_written(database: str) -> None:
    with Store(database) as store:
        key, other = store.create_key("k")[0].id, store.create_key("o")[0].id
        store.jobs.enqueue(key, "generations", BODY, most=3)
        # A batch of 2 half written (its row says 2; one item is in so far).
        staged = store.batches.stage(key, ENDPOINT, "file-x", "24h", None, [("a", BODY)], b"")
        store.db.execute("UPDATE batches SET total = 2 WHERE id = ?", (staged.id,))
        with pytest.raises(QueueFull) as full:
            store.jobs.enqueue(key, "generations", BODY, most=3)
        assert (full.value.queued, full.value.adding, full.value.most) == (3, 1, 3)
        with pytest.raises(QueueFull):
            store.batches.create(key, ENDPOINT, "file-x", "24h", None, [("b", BODY)], b"",
                                 most=3)
        store.jobs.enqueue(other, "generations", BODY, most=3)
        claimed = {job.key_id: job for job in store.jobs.claim_many(600, 5)}
        assert set(claimed) == {key, other}, "the batch being written has nothing to claim"
        store.jobs.finish(claimed[key].id, 200, b"{}")
        store.jobs.enqueue(key, "generations", BODY, most=3)  # a finished job frees its place


def test_a_batch_being_written_leaves_the_database_half_its_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After each step of a batch's writing, a pause as long as the step took (on a slow disk
    a fixed 2 ms pause left other requests' writes queueing behind it: their p99 tripled).
    The step's checkpoint, which holds nothing others wait for, is part of the pause."""
    step_s = 0.03  # each step's transaction takes this long, on a clock moved by hand
    now = [0.0]
    steps: list[tuple[float, float]] = []
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    monkeypatch.setattr(time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    with Store(tmp_path / "s.db") as store:
        key = store.create_key("k")[0].id
        transaction, checkpoint = store.db.transaction, store.db.checkpoint  # type: ignore[attr-defined]

        @contextlib.contextmanager
        def slow() -> Iterator[Cursor]:
            began = now[0]
            with transaction() as cur:
                yield cur
            now[0] += step_s
            steps.append((began, now[0]))

        def slow_checkpoint() -> None:
            now[0] += step_s / 3
            checkpoint()

        monkeypatch.setattr(store.db, "transaction", slow)
        monkeypatch.setattr(store.db, "checkpoint", slow_checkpoint)
        items = [(f"item-{i}", BODY) for i in range(450)]
        store.batches.stage(key, ENDPOINT, "file-x", "24h", None, items, b"")
    writes = steps[1:]  # the first wrote the batch's own row
    assert len(writes) == 5  # 100 items a step
    gaps = [after[0] - before[1] for before, after in itertools.pairwise(writes)]
    assert all(gap >= step_s for gap in gaps), gaps
