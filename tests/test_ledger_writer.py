"""The ledger's writer threads: answers and errors come back to the caller, a write nobody
waits for still happens (and its failure is logged without its values), a `later` write rides
with the next answered one or goes on its own within LATER_S, and shutting down writes
everything queued first."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from proxy.billing import writer as writer_module
from proxy.billing.writer import Writer


def test_a_write_answers_on_the_loop_from_another_thread() -> None:
    writer = Writer(2)

    async def go() -> tuple[str, bool]:
        return await writer.run(lambda a, b: (a + b, threading.current_thread().name), "x", "y")

    total, thread = asyncio.run(go())
    writer.shutdown()
    assert total == "xy" and thread.startswith("switchyard-ledger-")


def test_a_failed_write_raises_in_the_caller_and_the_thread_carries_on() -> None:
    writer = Writer(1)

    def broken() -> None:
        raise ValueError("disk full")

    async def go() -> int:
        with pytest.raises(ValueError, match="disk full"):
            await writer.run(broken)
        return await writer.run(lambda: 7)

    assert asyncio.run(go()) == 7
    writer.shutdown()


def test_a_write_nobody_waits_for_is_done_and_its_failure_logged_without_values(
        caplog: pytest.LogCaptureFixture) -> None:
    writer, done = Writer(1), threading.Event()

    def leaky(secret: str) -> None:
        raise RuntimeError(f"cannot write {secret}")

    async def go() -> None:
        writer.later(leaky, "sy-secret-key")
        writer.later(done.set)
        await asyncio.to_thread(done.wait, 5)

    with caplog.at_level(logging.ERROR, "switchyard.ledger"):
        asyncio.run(go())
        assert done.is_set()
        writer.shutdown()
    assert "RuntimeError" in caplog.text and "sy-secret-key" not in caplog.text


def test_a_later_write_goes_with_the_next_answered_write_after_it() -> None:
    writer, order = Writer(1), []

    async def go() -> list[str]:
        writer.later(order.append, "later")
        await asyncio.sleep(0.005)
        waited = list(order)  # it waits for company (up to LATER_S)
        await writer.run(order.append, "answered")
        await asyncio.to_thread(writer.shutdown)
        return waited

    assert asyncio.run(go()) == []
    assert order == ["answered", "later"]


def test_a_later_write_alone_goes_within_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "LATER_S", 0.01)
    writer, done = Writer(1), threading.Event()

    async def go() -> float:
        started = time.monotonic()
        writer.later(done.set)
        await asyncio.to_thread(done.wait, 5)
        return time.monotonic() - started

    took = asyncio.run(go())
    writer.shutdown()
    assert done.is_set() and took < 2


def test_later_writes_still_waiting_are_written_at_shutdown() -> None:
    writer, written = Writer(2), []

    async def go() -> None:
        for n in range(3):
            writer.later(written.append, n)
        writer.send_later()  # the app does this on its loop before shutting the writer down

    asyncio.run(go())
    writer.shutdown()
    assert written == [0, 1, 2]


def test_shutdown_writes_what_is_queued_even_for_a_caller_that_gave_up() -> None:
    writer, written = Writer(1), []

    def slow(n: int) -> None:
        time.sleep(0.02)
        written.append(n)

    async def go() -> None:
        waiting = asyncio.ensure_future(writer.run(slow, 0))
        await asyncio.sleep(0)
        waiting.cancel()
        for n in range(1, 5):
            writer.later(slow, n)

    asyncio.run(go())
    writer.shutdown()
    assert written == [0, 1, 2, 3, 4]


def test_a_writer_that_never_wrote_starts_no_threads() -> None:
    before = threading.active_count()
    Writer(8).shutdown()
    assert threading.active_count() == before


def test_writes_queued_together_go_to_their_each_as_one_list() -> None:
    writer, calls = Writer(1), []
    gate = threading.Event()

    def each(items: list[int]) -> list[BaseException | None]:
        calls.append(list(items))
        return [ValueError(f"item {i}") if i == 2 else None for i in items]

    async def go() -> list[BaseException | None]:
        blocker = asyncio.ensure_future(writer.run(gate.wait, 5))  # the thread is busy
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(writer.each(each, i)) for i in range(4)]
        writer.later_each(each, 9)
        writer.send_later()
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        return list(await asyncio.gather(*waiting, return_exceptions=True))

    outcomes = asyncio.run(go())
    writer.shutdown()
    assert calls == [[0, 1, 2, 3, 9]]  # one call: the four answered, the later one with them
    assert outcomes[:2] == [None, None] and outcomes[3] is None
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "item 2"


def test_an_each_that_raises_fails_every_item_it_was_given() -> None:
    writer = Writer(1)

    def broken(items: list[int]) -> list[BaseException | None]:
        raise RuntimeError("disk full")

    async def go() -> None:
        with pytest.raises(RuntimeError, match="disk full"):
            await writer.each(broken, 1)
        assert await writer.run(lambda: 7) == 7  # the thread goes on

    asyncio.run(go())
    writer.shutdown()


@pytest.mark.parametrize("engine, most", [("sqlite", 1), ("postgres", 2)])
def test_the_ledger_runs_few_writes_at_once_so_settles_share_commits(engine: str,
                                                                     most: int) -> None:
    """With eight PostgreSQL threads, twelve concurrent requests' settles went one per
    transaction and the threads held the GIL against the event loop (p99 134 ms, 53 ms with
    two). Writes beyond the threads wait, and then go together."""
    from proxy.services import ledger_writer

    writer, lock, running, peak = ledger_writer(engine), threading.Lock(), [0], [0]
    calls: list[list[int]] = []

    def each(items: list[int]) -> list[BaseException | None]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls.append(list(items))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return [None] * len(items)

    async def go() -> None:
        writes = []
        for i in range(12):  # a request's settle every 10 ms, each write taking 50 ms
            writes.append(asyncio.ensure_future(writer.each(each, i)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*writes)

    asyncio.run(go())
    writer.shutdown()
    assert peak[0] == most and len(calls) < 12
    assert sorted(i for call in calls for i in call) == list(range(12))
