"""Writes that may wait for the database but must not be lost while it is away.

A failed request's budget hold released (and its $0 ledger row), an idempotent response kept
for its retries, a delivered mark: when the database is unavailable they are kept here, in
order and in memory, and a supervised loop retries them until they go through. Each is
idempotent, so one retried after the database did take it (its answer was lost with the
connection) changes nothing. A process that dies with some still kept leaves them to the
crash paths: the sweep releases old holds, a stale idempotency claim may be taken over.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from proxy.billing.db import DatabaseUnavailable

log = logging.getLogger("switchyard.database")

MAX_KEPT = 100_000  # past this the oldest are dropped (and logged): memory stays bounded

_Write = tuple[Callable[..., object], tuple[Any, ...]]


class Deferred:
    """Thread-safe: writes are added from any thread and retried from one."""

    def __init__(self, limit: int = MAX_KEPT) -> None:
        self._writes: collections.deque[_Write] = collections.deque()
        self._lock = threading.Lock()
        self._limit = limit
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, call: Callable[..., object], *args: Any) -> None:
        """Keep `call(*args)` for when the database is back."""
        with self._lock:
            if len(self._writes) >= self._limit:
                self._writes.popleft()
                self.dropped += 1
                log.error("%d deferred database writes dropped: the database has been "
                          "unavailable too long", self.dropped)
            self._writes.append((call, args))

    def retry(self) -> int:
        """Run the kept writes in order until the database refuses one (it stays first, and
        DatabaseUnavailable is raised). A write that fails otherwise is dropped and its error
        raised: one bad write never holds the others back. Returns how many went through."""
        done = 0
        while True:
            with self._lock:
                if not self._writes:
                    return done
                write = self._writes[0]
            try:
                write[0](*write[1])
            except DatabaseUnavailable:
                raise
            except Exception:
                self._forget(write)
                raise
            self._forget(write)
            done += 1

    def _forget(self, write: _Write) -> None:
        with self._lock:
            if self._writes and self._writes[0] is write:
                self._writes.popleft()
