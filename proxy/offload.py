"""A process of its own for CPU-bound work the server must not do on its event loop's process.

A thread is not enough for pure Python: it holds the GIL while it works, and every request
the event loop serves meanwhile waits for its turns (checking a 50,000-line batch took about
1.4 s of CPU, and raised other requests' p99 two to three times). One worker process, started
by `spawn` (never a fork of a process with threads) at the first call, so a server that never
needs it never pays for it; closed by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")


class Offload:
    """One worker process; calls queue behind each other there (one core's worth at most)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in the worker process: `fn` a module-level function, its arguments and
        result picklable. A worker that died (killed, out of memory) is replaced and the call
        made once more; a second death is the caller's error."""
        loop = asyncio.get_running_loop()
        for last in (False, True):
            pool = self._started()
            try:
                return await loop.run_in_executor(pool, fn, *args)
            except BrokenProcessPool:
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False)
                if last:
                    raise
        raise AssertionError("unreachable")

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def aclose(self) -> None:
        """Stop the worker process (after the call it is on, if any: a few seconds at most)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return f"Offload({'started' if self._pool is not None else 'idle'})"
