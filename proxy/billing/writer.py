"""The threads that run the ledger's database writes for image requests, fed by one queue.

concurrent.futures' pool made every write pay for a Future with its Condition and a semaphore
probe in Python code, on the event loop's thread, twice per request (the settle before the
response, the delivered mark after). Here a write is one put on a C queue; the answer comes
back with one call_soon_threadsafe. A write nobody waits for (`later`: the delivered mark)
rides with the next answered write, run after that one is answered, so it costs no wake-up of
its own; a timer sends it if none comes within LATER_S. Such a write that fails is logged with
its traceback (never its message: values may hold secrets) and counted as a background error
(loop `delivered_marks`), and the thread goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from proxy.supervise import Failures

T = TypeVar("T")

_Call = tuple[Callable[..., Any], tuple[Any, ...]]
# (call, its args, who waits for it, calls that were waiting to go with the next write)
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | None", list[_Call]]
LATER_S = 0.05  # the longest a `later` write waits for company


class Writer:
    """`count` threads running database calls in the order they were queued (per thread)."""

    def __init__(self, count: int, name: str = "switchyard-ledger") -> None:
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(count)]
        self._started = False  # threads start with the first write, not with the app
        self._later: list[_Call] = []  # filled and taken on the event loop's thread
        self._timer: asyncio.TimerHandle | None = None
        self._failures = Failures("delivered_marks")

    def _put(self, job: _Job) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        self._queue.put(job)

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on a writer thread; its result (or exception) here. Cancelling the
        caller does not stop a write already queued: it is written all the same."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put((call, args, answer, self._take_later()))
        return await answer

    def later(self, call: Callable[..., Any], *args: Any) -> None:
        """`call(*args)` with the next write `run` sends, after that one is answered, or
        within LATER_S; nobody waits, and a failure is logged and counted."""
        self._later.append((call, args))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LATER_S, self.send_later)

    def send_later(self) -> None:
        """Send the `later` writes now (on the event loop's thread, e.g. before shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._later:
            self._put((_nothing, (), None, self._take_later()))

    def _take_later(self) -> list[_Call]:
        if not self._later:
            return []
        taken, self._later = self._later, []
        return taken

    def shutdown(self) -> None:
        """Write everything queued, then stop the threads (blocking: call it off the loop)."""
        if self._later:  # left by a caller that did not send_later() on its loop
            self._put((_nothing, (), None, self._take_later()))
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            call, args, answer, later = job
            try:
                result = call(*args)
            except BaseException as exc:  # handed to the waiter, or logged
                if answer is None:
                    self._failures.failed(exc)
                else:
                    _answer(answer, _fail, exc)
            else:
                if answer is not None:
                    _answer(answer, _done, result)
            for call, args in later:
                try:
                    call(*args)
                except BaseException as exc:
                    self._failures.failed(exc)
                else:
                    self._failures.succeeded()


def _nothing() -> None:
    pass


def _answer(answer: asyncio.Future[Any], settle: Callable[[asyncio.Future[Any], Any], None],
            value: Any) -> None:
    """Hand the outcome to the waiter's loop; a loop already closed (its caller gave up at
    shutdown) has nobody to tell, and must not stop this thread."""
    with contextlib.suppress(RuntimeError):
        answer.get_loop().call_soon_threadsafe(settle, answer, value)


def _done(answer: asyncio.Future[Any], result: Any) -> None:
    if not answer.done():
        answer.set_result(result)


def _fail(answer: asyncio.Future[Any], exc: BaseException) -> None:
    if not answer.done():
        answer.set_exception(exc)
