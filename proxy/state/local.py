"""The in-process state of a single Switchyard (and a fleet replica's own while Redis is away):
proxy.billing.limits and proxy.routing.slots behind the interface of proxy/state."""

from __future__ import annotations

from proxy.billing.keys import KeyRecord
from proxy.billing.limits import Admission, Limits
from proxy.catalog import Provider


class LocalLimits:
    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()

    async def admit(self, key: KeyRecord, images: int,
                    first: Provider | None = None) -> Admission:
        """`first` is the fleet's business: this process's slots cost no round trip."""
        return Admission(key, self._limits.admit(key, images))

    async def done(self, admission: Admission) -> None:
        self._limits.done(admission.key)

    def in_flight(self, key: KeyRecord) -> int:
        return self._limits.in_flight(key)
