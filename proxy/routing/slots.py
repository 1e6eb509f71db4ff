"""Backpressure: each provider takes at most `max_in_flight` calls at once, and interactive
requests come before batch items.

A request waits a bounded time for a slot, then moves to its next route; when every route is
full the client hears 503 with Retry-After rather than joining an unbounded queue. These are
one process's slots; proxy/state holds a fleet's in Redis.

Interactive first: a batch item (a patient request) takes a slot only while no interactive
request waits for that host, so a freed slot goes to the interactive request. And a slot a
batch item holds is owed to the interactive requests waiting: one may wait past SLOT_WAIT_S
(up to `owed_s`) while it is among the first as many waiters as batch items hold slots there.
Each of those slots comes free within one call of the host (a batch item at an interactive
host is held to the request timeout) and no batch item starts meanwhile, so the wait ends in
a slot, never in the 503 a host full of batch work would otherwise give. A host full of
interactive calls still answers with the bounded wait and 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.catalog import Provider

# How long a request waits for a provider's slot before trying its next route.
SLOT_WAIT_S = 0.25


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot held, handed back to `release`: where it came from goes with it, so a fleet
    replica gives back exactly the lease it took (or its own slot, taken while Redis was
    away), whatever other requests of the host do meanwhile."""

    provider: Provider
    lease: str | None = None  # the fleet's lease in Redis; None: a slot of this process
    patient: bool = False  # a batch item's: owed to the interactive requests waiting


class Slots:
    """One semaphore per provider, sized by its `max_in_flight`."""

    def __init__(self, providers: Iterable[Provider], wait_s: float = SLOT_WAIT_S,
                 processes: int = 1) -> None:
        # `serve --workers N`: a host's limit is the host's, so each process takes its share.
        self._processes = max(1, processes)
        self._limits = {p.name: self._share(p) for p in providers}
        self._semaphores = {name: asyncio.Semaphore(n) for name, n in self._limits.items()}
        self._held: Counter[str] = Counter()
        self._batch: Counter[str] = Counter()  # provider -> slots batch items hold
        self._asking: Counter[str] = Counter()  # provider -> interactive requests waiting
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self.waiting = 0  # patient requests now waiting in `released`
        self.held = 0  # slots held, all providers
        self.wait_s = wait_s

    def _share(self, provider: Provider) -> int:
        return max(1, provider.max_in_flight // self._processes)

    @property
    def capacity(self) -> int:
        """Attempts this process may have in flight, all hosts together."""
        return sum(self._limits.values())

    def _semaphore(self, provider: Provider) -> asyncio.Semaphore:
        found = self._semaphores.get(provider.name)
        if found is None:  # a provider built after startup (tests)
            self._limits[provider.name] = self._share(provider)
            found = self._semaphores[provider.name] = asyncio.Semaphore(
                self._limits[provider.name])
        return found

    async def acquire(self, provider: Provider, wait_s: float, patient: bool = False,
                      owed_s: float = 0.0) -> Slot | None:
        """The slot once held; None if none freed up within `wait_s` (or `owed_s`, for an
        interactive request that batch items owe a slot: see the module's docstring). A
        `patient` request (a batch item) never takes a slot an interactive one waits for."""
        name = provider.name
        semaphore = self._semaphore(provider)
        if semaphore.locked() or (patient and self._asking[name]):
            # The semaphore's queue is first come, first served: a waiting batch item (one
            # resuming its upstream task there) is served in turn, but counts as no one's debt.
            owed = not patient and self._asking[name] < self._batch[name]
            limit = max(wait_s, owed_s) if owed else wait_s
            if limit <= 0:
                return None
            if not patient:
                self._asking[name] += 1
            try:
                await asyncio.wait_for(semaphore.acquire(), limit)
            except TimeoutError:
                return None
            finally:
                if not patient:
                    self._asking[name] -= 1
        else:
            await semaphore.acquire()
        self._held[name] += 1
        self._batch[name] += patient
        self.held += 1
        return Slot(provider, patient=patient)

    def release(self, slot: Slot) -> None:
        provider = slot.provider
        self._held[provider.name] -= 1
        self._batch[provider.name] -= slot.patient
        self.held -= 1
        self._semaphore(provider).release()  # to the first interactive request waiting
        waiters = self._waiters.get(provider.name)
        while waiters:  # wake one patient waiter; done futures (timed out, woken) are skipped
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def released(self, providers: Iterable[Provider], timeout_s: float) -> None:
        """Wait until one of `providers` frees a slot, or `timeout_s`. Each release wakes
        one waiter, so a queue of patient requests does not stampede at every free slot."""
        waiter = asyncio.get_running_loop().create_future()
        for provider in providers:
            self._waiters.setdefault(provider.name, deque()).append(waiter)
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, max(0.0, timeout_s))
        finally:
            self.waiting -= 1

    def in_use(self, provider: Provider) -> int:
        return self._held[provider.name]

    async def free(self) -> int:
        """Slots free now in this process, all hosts together."""
        return max(0, self.capacity - self.held)
