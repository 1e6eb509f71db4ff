"""Host slots for the whole fleet: a host's `max_in_flight` is the host's, whichever replica
(or `serve --workers` process) calls it.

A slot is a lease in the host's sorted set in Redis, taken by one Lua script that first drops
the expired leases. A request waiting for a slot tries again every POLL_S or as soon as a slot
of that host may be free (this process released one, or another replica's attempt there
ended: proxy/state/shared_health.py), within the time it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Iterable

from proxy.catalog import Provider
from proxy.routing.slots import SLOT_WAIT_S, Slot
from proxy.state.link import Link

POLL_S = 0.05  # between tries of a waiting request (jittered)
PATIENT_POLL_S = 0.25  # how often a patient request (a batch item) looks again


class SharedSlots:
    def __init__(self, link: Link, providers: Iterable[Provider],
                 wait_s: float = SLOT_WAIT_S) -> None:
        self._link = link
        self._caps = {p.name: p.max_in_flight for p in providers}
        self._held: dict[str, list[str]] = {}  # provider -> this process's lease ids
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self.waiting = 0
        self.held = 0
        self.wait_s = wait_s

    @property
    def capacity(self) -> int:
        """Attempts the fleet may have in flight, all hosts together."""
        return sum(self._caps.values())

    def _where(self, name: str) -> str:
        return f"{self._link.prefix}:slots:{{{name}}}"

    async def acquire(self, provider: Provider, wait_s: float) -> Slot | None:
        """The slot (its lease) once held; None if none freed up within `wait_s`. Raises the
        link's errors when Redis does not answer."""
        cap = self._caps.setdefault(provider.name, provider.max_in_flight)
        leases = self._link.leases
        deadline = time.monotonic() + wait_s
        while True:
            lease = leases.new_id()
            if await self._link.acquire(self._where(provider.name),
                                        [cap, lease, leases.lease_ms]):
                return self.adopt(provider, lease)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self._pause([provider], min(left, POLL_S * random.uniform(0.5, 1.5)))

    def offer(self, provider: Provider) -> tuple[str, int, str]:
        """Where a slot of `provider` is taken, its cap and a new lease id: for an admission
        that takes the request's first slot in its own round trip."""
        cap = self._caps.setdefault(provider.name, provider.max_in_flight)
        return self._where(provider.name), cap, self._link.leases.new_id()

    def adopt(self, provider: Provider, lease: str) -> Slot:
        """A slot the admission took (see `offer`): held from now as if acquired here."""
        self._link.leases.hold(self._where(provider.name), lease)
        self._held.setdefault(provider.name, []).append(lease)
        self.held += 1
        return Slot(provider, lease)

    def release(self, slot: Slot) -> None:
        provider, lease = slot.provider, slot.lease
        assert lease is not None
        self._held[provider.name].remove(lease)
        self.held -= 1
        self._link.leases.release(self._where(provider.name), lease)
        self._link.released()
        self.freed(provider.name)

    def freed(self, name: str) -> None:
        """A slot of the host may be free (this process released one, or another replica's
        attempt there ended): one waiter here tries at once; the others' turn comes by
        polling."""
        waiters = self._waiters.get(name)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def released(self, providers: Iterable[Provider], timeout_s: float) -> None:
        """Return when one of `providers` may have a free slot: this process freed one, or
        a while passed (another replica's release is seen by trying)."""
        self.waiting += 1
        try:
            await self._pause(list(providers),
                              min(timeout_s, PATIENT_POLL_S * random.uniform(0.5, 1.5)))
        finally:
            self.waiting -= 1

    async def _pause(self, providers: list[Provider], timeout_s: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        for provider in providers:
            self._waiters.setdefault(provider.name, deque()).append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, max(0.0, timeout_s))
        finally:
            for provider in providers:
                with contextlib.suppress(ValueError):
                    self._waiters[provider.name].remove(waiter)

    def in_use(self, provider: Provider) -> int:
        return len(self._held.get(provider.name, ()))

    async def free(self) -> int:
        """Slots free across the fleet, all hosts together."""
        names = list(self._caps)
        counts = await self._link.count([self._where(name) for name in names])
        return sum(max(0, self._caps[name] - n) for name, n in zip(names, counts, strict=True))
