"""Fleet mode: state in Redis while it answers, this replica's own while it does not.

Each call asks Redis only while the link is up; a failure turns the link down (one log line)
and the same call is answered by the in-process implementation, so requests go on through a
Redis outage or restart. A release goes back exactly where its slot (or admission) came
from: the handle says which, and carries the lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from proxy.billing.keys import KeyRecord
from proxy.billing.limits import Admission
from proxy.catalog import Provider
from proxy.routing.health import Health
from proxy.routing.slots import Slot, Slots
from proxy.state.leases import Leases
from proxy.state.link import Link, open_link
from proxy.state.local import LocalLimits
from proxy.state.shared_health import HealthFeed
from proxy.state.shared_limits import SharedLimits
from proxy.state.shared_slots import SharedSlots


class FleetLimits:
    def __init__(self, link: Link, shared: SharedLimits, own: LocalLimits) -> None:
        self._link = link
        self._shared = shared
        self._own = own

    async def admit(self, key: KeyRecord, images: int,
                    first: Provider | None = None) -> Admission:
        if self._link.shared:
            try:
                return await self._shared.admit(key, images, first)
            except self._link.errors:
                pass  # the link is down now: this replica's own limits answer
        return await self._own.admit(key, images)

    async def done(self, admission: Admission) -> None:
        await (self._shared if admission.fleet else self._own).done(admission)


class FleetSlots:
    def __init__(self, link: Link, shared: SharedSlots, own: Slots) -> None:
        self._link = link
        self._shared = shared
        self._own = own
        self.wait_s = own.wait_s

    @property
    def waiting(self) -> int:
        return self._shared.waiting + self._own.waiting

    @property
    def held(self) -> int:
        return self._shared.held + self._own.held

    @property
    def capacity(self) -> int:
        return self._shared.capacity

    async def acquire(self, provider: Provider, wait_s: float, patient: bool = False,
                      owed_s: float = 0.0) -> Slot | None:
        if self._link.shared:
            started = time.monotonic()
            try:
                return await self._shared.acquire(provider, wait_s, patient, owed_s)
            except self._link.errors:
                waited = time.monotonic() - started
                wait_s, owed_s = max(0.0, wait_s - waited), max(0.0, owed_s - waited)
        return await self._own.acquire(provider, wait_s, patient, owed_s)

    def release(self, slot: Slot) -> None:
        if slot.lease is None:
            self._own.release(slot)
        else:
            self._shared.release(slot)

    async def released(self, providers: Iterable[Provider], timeout_s: float) -> None:
        if self._link.shared:
            await self._shared.released(providers, timeout_s)
        else:
            await self._own.released(providers, timeout_s)

    def in_use(self, provider: Provider) -> int:
        return self._shared.in_use(provider) + self._own.in_use(provider)

    async def free(self) -> int:
        if self._link.shared:
            try:
                return await self._shared.free()
            except self._link.errors:
                pass
        return await self._own.free()


def build(url: str, prefix: str, providers: Sequence[Provider], own_limits: LocalLimits,
          own_slots: Slots, health: Health | None
          ) -> tuple[Link, FleetLimits, FleetSlots, HealthFeed | None]:
    link = open_link(url, prefix, Leases())
    shared_slots = SharedSlots(link, providers, own_slots.wait_s)
    feed = None if health is None else HealthFeed(link, health, shared_slots.freed)
    return (link, FleetLimits(link, SharedLimits(link, shared_slots), own_limits),
            FleetSlots(link, shared_slots, own_slots), feed)
