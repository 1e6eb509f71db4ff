"""The threads that run the ledger's database writes for image requests, fed by one queue.

concurrent.futures' pool made every write pay for a Future with its Condition and a semaphore
probe in Python code, on the event loop's thread, twice per request (the settle before the
response, the delivered mark after). Here a write is one put on a C queue; the answer comes
back with one call_soon_threadsafe. A write nobody waits for (`later`: the delivered mark)
rides with the next answered write, run after that one is answered, so it costs no wake-up of
its own; a timer sends it if none comes within LATER_S. Such a write that fails is logged with
its traceback (never its message: values may hold secrets) and counted as a background error
(loop `delivered_marks`), and the thread goes on.

Group commit: a thread takes every write queued behind the one it woke for (up to MAX_BATCH),
and the writes of one `Each` function that follow each other (`each`, then the `later_each`
ones that rode along: settles, then delivered marks) go to it as one list, which it writes in
one transaction. A commit, and the pages it writes, is paid once per batch instead of once
per settle and once per mark.

On SQLite, a request alone in the process writes on the event loop's own thread (`each`'s
`now`): a commit there is a few page writes into the log, no fsync (WAL, synchronous=NORMAL),
and it spares the thread's wake-up and the loop's, the GIL passed back and forth, and the
caller's pause, which cost more than the write (at 1 concurrent: 0.1 to 0.3 ms of CPU a
request, and as much p50). With company, the threads write as above: there writes share
commits, and the SQLite work leaves the loop, which then has others to serve (at 1.4 MB x 8
on the loop it cost 8% of requests/s). A write on the loop never waits for a lock: a database
taken by a thread or another process makes it Busy at once, and it goes to a thread. One
that took longer than SLOW_NOW_S (a disk that stalls), written or not, sends every write to
the threads for REST_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from proxy.supervise import Failures

T = TypeVar("T")

# Writes one item each, together: for each item None (written) or the exception that item
# met; an exception raised by the call itself is every item's.
Each = Callable[[list[Any]], Sequence[BaseException | None]]
# (call, its args, batched: `call` is an Each and args is (item,))
_Call = tuple[Callable[..., Any], tuple[Any, ...], bool]
# (call, its args, batched, who waits for it, calls that were waiting to go with the next write)
_Job = tuple[Callable[..., Any], tuple[Any, ...], bool, "asyncio.Future[Any] | None",
             list[_Call]]
# Writes all of its items in one go on the caller's thread, or raises (nothing written).
Now = Callable[[list[Any]], None]
LATER_S = 0.05  # the longest a `later` write waits for company
MAX_BATCH = 64  # writes one thread takes at a time
SLOW_NOW_S = 0.01  # a write on the loop's thread that took longer ...
REST_S = 30.0  # ... sends the writes to the threads for this long

log = logging.getLogger("switchyard.ledger")


class Writer:
    """`count` threads running database calls in the order they were queued (per thread)."""

    def __init__(self, count: int, name: str = "switchyard-ledger",
                 inline: bool = False) -> None:
        """`inline`: `each` tries a write with a `now` on the event loop's thread first."""
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(count)]
        self._started = False  # threads start with the first write, not with the app
        self._later: list[_Call] = []  # filled and taken on the event loop's thread
        self._timer: asyncio.TimerHandle | None = None
        self._failures = Failures("delivered_marks")
        self._inline = inline
        self._resting_until = 0.0  # after a slow write on the loop's thread
        self._parties = 0  # callers in `writing`

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
        self._put((call, args, False, answer, self._take_later()))
        return await answer

    async def each(self, batch: Each, item: Any, now: Now | None = None) -> None:
        """`batch([item, ...])` on a writer thread, with the items of other callers queued
        beside this one; raises what this item met.

        With `now`, on an `inline` writer, a caller alone (see `writing`) first tries
        `now([item, ...])` on this thread, with the `later` items of `batch` waiting: if it
        raises, nothing was written, and the items go to a thread as above."""
        if now is not None and self._parties <= 1 and self._inline and \
                time.monotonic() >= self._resting_until and self._now(batch, now, [item]):
            return
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put((batch, (item,), True, answer, self._take_later()))
        await answer

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A caller that will write soon (a request, from its start to its end). While
        it is the only one, its writes go on the event loop's thread; while there are more,
        to a thread, where theirs share commits and the loop, the busy one, goes on."""
        self._parties += 1
        try:
            yield
        finally:
            self._parties -= 1

    def _now(self, batch: Each, now: Now, items: list[Any]) -> bool:
        """`now(items)` with the `later` items of `batch`: True if they were written (the
        `later` ones are then done), False if it raised."""
        riding = [call for call in self._later if call[2] and call[0] == batch]
        started = time.monotonic()
        try:
            now([*items, *(args[0] for _, args, _ in riding)])
        except Exception:  # nothing written: a thread writes them, and reports any failure
            return False
        finally:  # slow, written or not (a disk that stalls, then fails)
            took = time.monotonic() - started
            if took > SLOW_NOW_S:
                self._resting_until = started + took + REST_S
                log.info("a ledger write on the event loop took %.0f ms: writes go to the "
                         "ledger thread for the next %.0f s", took * 1000, REST_S)
        if riding:
            self._later = [call for call in self._later if not (call[2] and call[0] == batch)]
            self._failures.succeeded()  # as the thread reports marks it wrote
        return True

    def later(self, call: Callable[..., Any], *args: Any) -> None:
        """`call(*args)` with the next write (after it, on a thread; `later_each` items may
        also go in a write on the loop's thread), or within LATER_S; nobody waits, and a
        failure is logged and counted."""
        self._add_later((call, args, False))

    def later_each(self, batch: Each, item: Any) -> None:
        """`later`, written with the other items of `batch` that go along."""
        self._add_later((batch, (item,), True))

    def _add_later(self, call: _Call) -> None:
        self._later.append(call)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LATER_S, self.send_later)

    def send_later(self) -> None:
        """Send the `later` writes now (on the event loop's thread, e.g. before shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._later:
            self._put((_nothing, (), False, None, self._take_later()))

    def _take_later(self) -> list[_Call]:
        if not self._later:
            return []
        taken, self._later = self._later, []
        return taken

    def shutdown(self) -> None:
        """Write everything queued, then stop the threads (blocking: call it off the loop)."""
        if self._later:  # left by a caller that did not send_later() on its loop
            self._put((_nothing, (), False, None, self._take_later()))
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        stop = False
        while not stop and (job := self._queue.get()) is not None:
            jobs, stop = self._behind(job)
            steps: list[_Step] = [job[:4] for job in jobs if job[0] is not _nothing]
            steps += [(*call, None) for job in jobs for call in job[4]]  # the later ones
            for call, args, batched, answers in _grouped(steps):
                for answer, outcome in zip(answers, _outcomes(call, args, batched), strict=True):
                    if answer is not None:
                        _answer(answer, *outcome)
                    elif outcome[0] is _fail:
                        self._failures.failed(outcome[1])
                    else:
                        self._failures.succeeded()

    def _behind(self, job: _Job) -> tuple[list[_Job], bool]:
        """`job` and those queued behind it (up to MAX_BATCH); True if this thread's stop was
        among them (it stops after writing them)."""
        jobs = [job]
        while len(jobs) < MAX_BATCH:
            try:
                more = self._queue.get_nowait()
            except Empty:
                break
            if more is None:
                return jobs, True
            jobs.append(more)
        return jobs, False


_Step = tuple[Callable[..., Any], tuple[Any, ...], bool, "asyncio.Future[Any] | None"]
# (call, its args or a batch's items, batched, their waiters)
_Group = tuple[Callable[..., Any], list[Any], bool, list["asyncio.Future[Any] | None"]]


def _grouped(steps: list[_Step]) -> list[_Group]:
    """Steps in their order, a batched one joined with the next ones of the same Each."""
    groups: list[_Group] = []
    for call, args, batched, answer in steps:
        if batched and groups and groups[-1][2] and groups[-1][0] == call:
            groups[-1][1].extend(args)
            groups[-1][3].append(answer)
        else:
            groups.append((call, list(args), batched, [answer]))
    return groups


_Outcome = tuple[Callable[["asyncio.Future[Any]", Any], None], Any]


def _outcomes(call: Callable[..., Any], args: list[Any], batched: bool) -> list[_Outcome]:
    """What each waiter of a group gets: (_done, result) or (_fail, exception)."""
    try:
        if not batched:
            return [(_done, call(*args))]
        met = list(call(args))
        if len(met) != len(args):
            raise RuntimeError(f"{call!r} answered {len(met)} of {len(args)} items")
    except BaseException as exc:  # handed to the waiters, or logged
        return [(_fail, exc)] * (len(args) if batched else 1)
    return [(_done, None) if exc is None else (_fail, exc) for exc in met]


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
