"""A key's rate limits for the whole fleet: one Lua script in Redis per admission.

The script does what proxy.billing.limits.Limits.admit does in one process (windows of
entries merged within MERGE_S, trimmed by their last event, then the checks, then the
record) and returns the figures, so the headers and refusals are the same functions'. A
key's concurrency is a set of leases (proxy/state/leases.py): a request that a killed replica
was running stops counting within a lease's time.
"""

from __future__ import annotations

from collections import defaultdict

from proxy.billing.keys import KeyRecord
from proxy.billing.limits import MERGE_S, WINDOW_S, Admission, Figures, Limited, check, headers
from proxy.catalog import Provider
from proxy.state.link import Link
from proxy.state.shared_slots import SharedSlots

_WINDOW_MS = round(WINDOW_S * 1000)
_MERGE_MS = round(MERGE_S * 1000)


class SharedLimits:
    def __init__(self, link: Link, slots: SharedSlots | None = None) -> None:
        self._link = link
        self._slots = slots
        self._leases: defaultdict[str, list[str]] = defaultdict(list)  # key id -> lease ids

    async def admit(self, key: KeyRecord, images: int,
                    first: Provider | None = None) -> Admission:
        """As Limits.admit, for every replica at once; in the same round trip, a slot of
        `first` (the request's first host) when one is free. Raises the link's errors when
        Redis does not answer (the caller falls back)."""
        base = f"{self._link.prefix}:key:{{{key.id}}}"
        limits = key.limits
        lease = self._link.leases.new_id() if limits.concurrency is not None else ""
        where, cap, slot_lease = f"{base}:window", -1, ""  # no slot asked: placeholders
        if first is not None and self._slots is not None:
            where, cap, slot_lease = self._slots.offer(first)
        try:
            refused, requests, images_used, reset_ms, live, slot = await self._link.admit(
                [f"{base}:window", f"{base}:totals", f"{base}:live", where],
                [_limit(limits.rpm), _limit(limits.ipm), _limit(limits.concurrency), images,
                 lease, self._link.leases.lease_ms, _WINDOW_MS, _MERGE_MS, cap, slot_lease])
        except BaseException:  # sent, maybe run: never leave a lease nobody holds
            if lease:
                self._link.leases.release(f"{base}:live", lease)
            if slot_lease:
                self._link.leases.release(where, slot_lease)
            raise
        used = Figures(requests, images_used, reset_ms / 1000, reset_ms / 1000)
        if refused:
            check(key, used, images, live)
            raise Limited("This key is at its limits.", headers(key, used))  # never reached
        held = None
        if slot and first is not None and self._slots is not None:
            held = self._slots.adopt(first, slot_lease)
        if lease:
            self._link.leases.hold(f"{base}:live", lease)
            self._leases[key.id].append(lease)
        return Admission(key, headers(key, used), fleet=True, lease=lease or None, slot=held)

    async def done(self, admission: Admission) -> None:
        key, lease = admission.key, admission.lease
        held = self._leases.get(key.id)
        if lease is None or not held or lease not in held:
            return
        held.remove(lease)
        if not held:
            del self._leases[key.id]
        where = f"{self._link.prefix}:key:{{{key.id}}}:live"
        # The loop's flush removes it too, after any renewal already on its way that could
        # write it back; this removal is for the client's next request, now.
        self._link.leases.release(where, lease)
        self._link.released()
        await self._link.remove(where, lease)

    def in_flight(self, key: KeyRecord) -> int:
        return len(self._leases.get(key.id, ()))


def _limit(value: int | None) -> int:
    return -1 if value is None else value
