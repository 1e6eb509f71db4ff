"""Backpressure: each provider takes at most `max_in_flight` calls at once.

A request waits a bounded time for a slot, then moves to its next route; when every route is
full the client hears 503 with Retry-After rather than joining an unbounded queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from proxy.catalog import Provider

# How long a request waits for a provider's slot before trying its next route.
SLOT_WAIT_S = 0.25


class Slots:
    """One semaphore per provider, sized by its `max_in_flight`."""

    def __init__(self, providers: Iterable[Provider], wait_s: float = SLOT_WAIT_S) -> None:
        self._limits = {p.name: max(1, p.max_in_flight) for p in providers}
        self._semaphores = {name: asyncio.Semaphore(n) for name, n in self._limits.items()}
        self._held: dict[str, int] = {}
        self.wait_s = wait_s

    def _semaphore(self, provider: Provider) -> asyncio.Semaphore:
        found = self._semaphores.get(provider.name)
        if found is None:  # a provider built after startup (tests)
            self._limits[provider.name] = max(1, provider.max_in_flight)
            found = self._semaphores[provider.name] = asyncio.Semaphore(
                self._limits[provider.name])
        return found

    async def acquire(self, provider: Provider, wait_s: float) -> bool:
        """True once a slot is held; False if none freed up within `wait_s`."""
        semaphore = self._semaphore(provider)
        if semaphore.locked():
            try:
                await asyncio.wait_for(semaphore.acquire(), max(0.0, wait_s))
            except TimeoutError:
                return False
        else:
            await semaphore.acquire()
        self._held[provider.name] = self._held.get(provider.name, 0) + 1
        return True

    def release(self, provider: Provider) -> None:
        self._held[provider.name] -= 1
        self._semaphore(provider).release()

    def in_use(self, provider: Provider) -> int:
        return self._held.get(provider.name, 0)
