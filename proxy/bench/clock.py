"""A virtual-time asyncio event loop: sleeps, timeouts and call_later take no real time.

When the loop has nothing ready and would block until its next timer, the selector moves the
virtual clock forward to that timer instead of waiting, so an hour of asyncio.sleep and
wait_for runs in as long as the callbacks take. Real file descriptors (the loop's self-pipe)
are still polled, without blocking.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    """The loop would wait forever: nothing is ready, no timer is set, no descriptor is ready."""


class VirtualClock:
    """Seconds since the loop started, moved only by the selector."""

    def __init__(self) -> None:
        self.now = 0.0


class _VirtualSelector(selectors.SelectSelector):
    """Polls real descriptors without blocking; a wait with a timeout advances the clock."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            # Real time would not help either: nothing in this process could wake the loop.
            raise Deadlock("the event loop has nothing to run and no timer set")
        if timeout > 0:
            self._clock.now += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose time() is the virtual clock."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        super().__init__(selector=_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a fresh virtual-time loop, then close the loop (like
    asyncio.run: tasks left over are cancelled first)."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    leftovers = asyncio.all_tasks(loop)
    for task in leftovers:
        task.cancel()
    if leftovers:
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
