"""Host slots for the whole fleet: a host's `max_in_flight` is the host's, whichever replica
(or `serve --workers` process) calls it.

A slot is a lease in the host's sorted set in Redis, taken by one Lua script that first drops
the expired leases. A request waiting for a slot tries again every POLL_S or as soon as a slot
of that host may be free (this process released one, or another replica's attempt there
ended: proxy/state/shared_health.py), within the time it was given.

Interactive requests come first, fleet-wide, by the rules of proxy/routing/slots.py. A batch
item's lease id starts with "b:", so the script counts the slots batch items hold. An
interactive request that finds the host full writes itself into the host's set of requests
waiting (an id that expires after ASKING_S unless its next try, every POLL_S at most, renews
it), and while that set is not empty no batch item of any replica takes a slot there: the
next free one goes to a waiting interactive request. It waits up to `owed_s` while no more
interactive requests wait than batch items hold slots (each of those frees within one call of
the host), else up to its `wait_s` as usual, and takes its id out when it gives up. A replica
killed while one waits holds batch items back for ASKING_S at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable

from proxy.catalog import Provider
from proxy.routing.slots import SLOT_WAIT_S, Slot
from proxy.state.link import Link

log = logging.getLogger("switchyard.fleet")

POLL_S = 0.05  # between tries of a waiting request (jittered)
PATIENT_POLL_S = 0.25  # how often a patient request (a batch item) looks again
ASKING_S = 1.0  # how long a waiting interactive request holds batch items back unrenewed
BATCH = "b:"  # how a batch item's lease id begins


class SharedSlots:
    def __init__(self, link: Link, providers: Iterable[Provider],
                 wait_s: float = SLOT_WAIT_S) -> None:
        self._link = link
        self._caps = {p.name: p.max_in_flight for p in providers}
        self._held: dict[str, list[str]] = {}  # provider -> this process's lease ids
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._first: dict[str, deque[asyncio.Future[None]]] = {}  # interactive waiters
        self.waiting = 0
        self.held = 0
        self.wait_s = wait_s

    @property
    def capacity(self) -> int:
        """Attempts the fleet may have in flight, all hosts together."""
        return sum(self._caps.values())

    def _where(self, name: str) -> str:
        return f"{self._link.prefix}:slots:{{{name}}}"

    async def acquire(self, provider: Provider, wait_s: float, patient: bool = False,
                      owed_s: float = 0.0) -> Slot | None:
        """The slot (its lease) once held; None if none freed up within `wait_s` (or
        `owed_s`: see the module's docstring). Raises the link's errors when Redis does not
        answer."""
        cap = self._caps.setdefault(provider.name, provider.max_in_flight)
        leases = self._link.leases
        where = self._where(provider.name)
        asking = f"{where}:asking"
        waiter = "" if patient else leases.new_id()
        started = time.monotonic()
        while True:
            lease = BATCH + leases.new_id() if patient else leases.new_id()
            try:
                held, batch, waiting = await self._link.acquire(
                    [where, asking], [cap, lease, leases.lease_ms, waiter,
                                      round(ASKING_S * 1000)])
            except BaseException:  # sent, maybe run: never leave a lease nobody holds
                leases.release(where, lease)
                raise
            if held:
                return self.adopt(provider, lease, patient)
            owed = 0 < waiting <= batch
            left = started + (max(wait_s, owed_s) if owed else wait_s) - time.monotonic()
            if left <= 0:
                if waiter:
                    await self._link.remove(asking, waiter)
                return None
            await self._pause([provider], min(left, POLL_S * random.uniform(0.5, 1.5)),
                              first=not patient)

    def offer(self, provider: Provider) -> tuple[str, int, str]:
        """Where a slot of `provider` is taken, its cap and a new lease id: for an admission
        that takes the request's first slot in its own round trip."""
        cap = self._caps.setdefault(provider.name, provider.max_in_flight)
        return self._where(provider.name), cap, self._link.leases.new_id()

    def adopt(self, provider: Provider, lease: str, patient: bool = False) -> Slot:
        """A slot the admission took (see `offer`): held from now as if acquired here."""
        self._link.leases.hold(self._where(provider.name), lease)
        self._held.setdefault(provider.name, []).append(lease)
        self.held += 1
        return Slot(provider, lease, patient)

    def release(self, slot: Slot) -> None:
        provider, lease = slot.provider, slot.lease
        held = self._held.get(provider.name, [])
        if lease is None or lease not in held:
            log.error("fleet: a slot of %s released twice or never held", provider.name)
            return
        held.remove(lease)
        self.held -= 1
        self._link.leases.release(self._where(provider.name), lease)
        self._link.released()
        self.freed(provider.name)

    def freed(self, name: str) -> None:
        """A slot of the host may be free (this process released one, or another replica's
        attempt there ended): one waiter here tries at once, an interactive one first; the
        others' turn comes by polling."""
        for waiters in (self._first.get(name), self._waiters.get(name)):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return

    async def released(self, providers: Iterable[Provider], timeout_s: float) -> None:
        """Return when one of `providers` may have a free slot: this process freed one, or
        a while passed (another replica's release is seen by trying)."""
        self.waiting += 1
        try:
            await self._pause(list(providers),
                              min(timeout_s, PATIENT_POLL_S * random.uniform(0.5, 1.5)))
        finally:
            self.waiting -= 1

    async def _pause(self, providers: list[Provider], timeout_s: float,
                     first: bool = False) -> None:
        """Until a slot of `providers` may be free, or `timeout_s`; `first`: an interactive
        request's pause, woken before batch items'."""
        queues = self._first if first else self._waiters
        waiter = asyncio.get_running_loop().create_future()
        for provider in providers:
            queues.setdefault(provider.name, deque()).append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, max(0.0, timeout_s))
        finally:
            for provider in providers:
                with contextlib.suppress(ValueError):
                    queues[provider.name].remove(waiter)

    def in_use(self, provider: Provider) -> int:
        return len(self._held.get(provider.name, ()))

    async def free(self) -> int:
        """Slots free across the fleet, all hosts together."""
        names = list(self._caps)
        counts = await self._link.count([self._where(name) for name in names])
        return sum(max(0, self._caps[name] - n) for name, n in zip(names, counts, strict=True))
