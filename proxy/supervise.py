"""Supervised background loops: an exception is logged with its traceback, counted in
switchyard_background_errors_total{loop}, and the loop goes on after a pause.

The traceback names the code, not the values: an exception's message may hold a secret (a
key, a URL with a token in it), so the log gets every frame and each exception's type, never
its text. While a loop keeps failing the same way (a database that is away), the first
failure is logged and the rest only counted, and its recovery is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable

from proxy import metrics

log = logging.getLogger("switchyard.background")

FIRST_PAUSE_S = 0.25  # after a failure; doubling while it keeps failing
MAX_PAUSE_S = 2.0  # so a loop resumes within this once its cause is gone
_CHAIN = 5  # causes followed at most


async def forever(loop: str, step: Callable[[], Awaitable[object]], every_s: float) -> None:
    """`step()` every `every_s` seconds until cancelled, whatever it raises."""
    failures = Failures(loop)
    while True:
        try:
            await step()
        except Exception as exc:
            await asyncio.sleep(failures.failed(exc))
            continue
        failures.succeeded()
        await asyncio.sleep(every_s)


class Failures:
    """One loop's run of consecutive failures. Thread-safe (writer threads report too)."""

    def __init__(self, loop: str) -> None:
        self.loop = loop
        self._counter = metrics.BACKGROUND_ERRORS.labels(loop)
        self._lock = threading.Lock()
        self._count = 0
        self._kind: type[BaseException] | None = None
        self._since = 0.0

    def failed(self, exc: BaseException) -> float:
        """Count one failure, log it unless it repeats the last one; returns how long to
        pause before trying again."""
        self._counter.inc()
        with self._lock:
            self._count += 1
            count, repeated = self._count, type(exc) is self._kind
            self._kind = type(exc)
            if count == 1:
                self._since = time.monotonic()
        if not repeated:
            log.error("background loop %s failed (%s), and goes on\n%s", self.loop,
                      type(exc).__name__, traceback_text(exc))
        return min(MAX_PAUSE_S, FIRST_PAUSE_S * 2.0 ** min(count - 1, 8))

    def succeeded(self) -> None:
        if not self._count:  # the common case: no lock
            return
        with self._lock:
            count, self._count, self._kind = self._count, 0, None
        if count:
            log.warning("background loop %s works again after %d failures in %.1f s",
                        self.loop, count, time.monotonic() - self._since)


def traceback_text(exc: BaseException) -> str:
    """Python's traceback of `exc` and the exceptions it came from, each message left out."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < _CHAIN and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    parts: list[str] = []
    for inner in reversed(chain):
        if parts:
            parts.append("\nwhich led to:\n")
        parts += ["Traceback (most recent call last):\n", *traceback.format_tb(inner.__traceback__),
                  f"{type(inner).__module__}.{type(inner).__qualname__} (message not logged)\n"]
    return "".join(parts).rstrip("\n")
