"""Supervised background loops (proxy/supervise.py): an exception is logged with its traceback
(never its message), counted by loop, and the loop goes on; a run of the same failure is logged
once. The job worker and the batch gatherer live through their database's failures."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
from prometheus_client import REGISTRY

from proxy import supervise
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.writer import Writer
from proxy.providers import flows
from proxy.providers.grouping import SENDING, Groups
from tests.fakes.gemini_batch import FakeGeminiBatch
from tests.test_grouping import Remembered, deferred, items, send_all


def errors(loop: str) -> float:
    value = REGISTRY.get_sample_value("switchyard_background_errors_total", {"loop": loop})
    return value or 0.0


SECRET = "sy-" + secrets.token_hex(8)  # made at run time: no source line shows it


def boom(secret: str) -> None:
    raise RuntimeError(f"cannot reach https://hooks.example/{secret}")


def test_a_loop_logs_counts_and_goes_on(caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "FIRST_PAUSE_S", 0.001)
    steps: list[int] = []
    before = errors("test_loop")

    async def step() -> None:
        steps.append(len(steps))
        if len(steps) <= 3:
            boom(SECRET)
        if len(steps) == 5:
            raise DatabaseUnavailable("the database is away")

    async def go() -> None:
        task = asyncio.create_task(supervise.forever("test_loop", step, 0.001))
        while len(steps) < 8:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, "switchyard.background"):
        asyncio.run(go())
    assert errors("test_loop") - before == 4
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    # Three RuntimeErrors in a row are logged once; the DatabaseUnavailable after a success
    # is a new run.
    assert len(failed) == 2
    assert failed[0].startswith("background loop test_loop failed (RuntimeError), and goes on\n"
                                "Traceback (most recent call last)")
    assert "in boom" in failed[0] and "builtins.RuntimeError (message not logged)" in failed[0]
    assert SECRET not in caplog.text
    assert "works again after 3 failures" in caplog.text


def test_a_traceback_follows_the_cause_without_messages() -> None:
    try:
        try:
            boom(SECRET)
        except RuntimeError as exc:
            raise DatabaseUnavailable(SECRET[::-1]) from exc
    except DatabaseUnavailable as exc:
        text = supervise.traceback_text(exc)
    assert text.index("builtins.RuntimeError") < text.index("which led to") < \
        text.index("proxy.billing.db.DatabaseUnavailable")
    assert SECRET not in text and SECRET[::-1] not in text


def test_a_failed_delivered_mark_is_counted_and_the_writer_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    writer, done = Writer(1), asyncio.Event()
    before = errors("delivered_marks")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        writer.later(boom, SECRET)
        writer.later(loop.call_soon_threadsafe, done.set)
        await asyncio.wait_for(done.wait(), 5)

    with caplog.at_level(logging.ERROR):
        asyncio.run(go())
        writer.shutdown()
    assert errors("delivered_marks") - before == 1
    assert "background loop delivered_marks failed (RuntimeError)" in caplog.text
    assert SECRET not in caplog.text


class Forgetful(Remembered):
    """A jobs table whose database goes away after the batch's label was written, when its
    name is to be remembered (or before the label, `from_start`)."""

    def __init__(self, from_start: bool = False) -> None:
        super().__init__()
        self.from_start = from_start

    def remember(self, tickets: list[str], name: str) -> None:
        if self.from_start or not name.startswith(SENDING):
            raise DatabaseUnavailable("the database is away")
        super().remember(tickets, name)


def test_a_gatherer_whose_database_is_away_still_answers_its_members() -> None:
    """The batch was sent (and paid for): its members wait for it rather than fail and be
    sent again; the failed write is logged and counted."""
    fake = FakeGeminiBatch()
    before = errors("batch_gather")
    results = asyncio.run(send_all(fake, items(3), deferred(),
                                   Groups(flows.run_steps, Forgetful())))
    assert fake.creates == 1
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert errors("batch_gather") - before == 1


def test_a_gatherer_whose_database_is_away_before_the_create_sends_nothing() -> None:
    """Without the label written down a crash could not find the batch: its members go back
    to the queue (the worker requeues a job that met DatabaseUnavailable) unsent."""
    fake = FakeGeminiBatch()
    results = asyncio.run(send_all(fake, items(3), deferred(),
                                   Groups(flows.run_steps, Forgetful(from_start=True))))
    assert fake.creates == 0
    assert all(isinstance(r, DatabaseUnavailable) for r in results), results
