"""Shared state behind one interface: keys' rate limits, hosts' slots and routes' health.

One process keeps them in memory (proxy/state/local.py); in fleet mode (`redis_url` set) they
live in Redis for every replica, each falling back to its own while Redis is away
(proxy/state/fleet.py). The request path holds a RateLimits and a HostSlots and never learns
which it has; nothing of Redis is imported without a redis_url.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from proxy import metrics
from proxy.billing.keys import KeyRecord
from proxy.billing.limits import Admission
from proxy.catalog import Provider
from proxy.config import Config
from proxy.routing.health import Health
from proxy.routing.slots import Slot, Slots
from proxy.state.local import LocalLimits

if TYPE_CHECKING:
    from proxy.state.link import Link
    from proxy.state.shared_health import HealthFeed

# A starting replica waits this long at most for what the fleet holds out (Redis answers in
# well under a millisecond when it answers at all).
CATCH_UP_S = 1.0


class RateLimits(Protocol):
    async def admit(self, key: KeyRecord, images: int,
                    first: Provider | None = None) -> Admission:
        """Count a request of `images` images against the key's rpm, ipm and concurrency,
        or raise proxy.billing.limits.Limited; the admission holds the OpenAI rate-limit
        headers for the reply. Every admission is handed back to `done`. In fleet mode it
        may also hold a slot of `first` (the request's first host), taken in the same
        round trip: the router uses it, or it is released."""

    async def done(self, admission: Admission) -> None:
        """The request ended: its concurrency is free before its response goes out, so the
        client's next request is admitted, as on one process."""


class HostSlots(Protocol):
    """Each host takes at most its `max_in_flight` calls at once."""

    wait_s: float  # how long an interactive request waits for a host's slot

    @property
    def waiting(self) -> int:
        """Patient requests of this process now waiting in `released`."""

    @property
    def held(self) -> int:
        """Slots this process holds, all hosts."""

    @property
    def capacity(self) -> int:
        """Calls that may be in flight at once, all hosts together."""

    async def acquire(self, provider: Provider, wait_s: float, patient: bool = False,
                      owed_s: float = 0.0) -> Slot | None:
        """The slot once held; None if none freed up within `wait_s`. A `patient` request
        (a batch item) never takes a slot an interactive request waits for; an interactive
        one waits up to `owed_s` for a slot batch items hold (proxy/routing/slots.py)."""

    def release(self, slot: Slot) -> None: ...

    async def released(self, providers: Iterable[Provider], timeout_s: float) -> None:
        """Return when one of `providers` may have freed a slot, or after `timeout_s`."""

    def in_use(self, provider: Provider) -> int:
        """Slots of the provider this process holds."""

    async def free(self) -> int:
        """Slots free now, all hosts together (fleet-wide in fleet mode)."""


@dataclass
class State:
    limits: RateLimits
    slots: HostSlots
    link: Link | None = None  # fleet mode's Redis
    feed: HealthFeed | None = None  # fleet mode: route health shared through it

    async def start(self) -> None:
        if self.link is None:
            metrics.FLEET_SHARED.set(0)
        else:
            await self.link.start()
        if self.feed is not None:
            self.feed.start()
            await self.feed.caught_up(CATCH_UP_S)

    async def aclose(self) -> None:
        if self.feed is not None:
            await self.feed.aclose()
        if self.link is not None:
            await self.link.close()

    def describe(self) -> dict[str, str]:
        """For /readyz: the mode and, in fleet mode, whether Redis answers."""
        if self.link is None:
            return {"mode": "single"}
        return {"mode": "fleet", "redis": "shared" if self.link.shared else "unreachable"}


def build(config: Config, providers: Sequence[Provider], health: Health | None = None) -> State:
    """The state of this process: in memory, or the fleet's in Redis with memory to fall
    back on. Under `serve --workers N` a process's own slots are its share of each host.
    `health` stays in memory either way; in fleet mode it hears every replica's outcomes."""
    own_limits = LocalLimits()
    own_slots = Slots(providers, processes=config.workers)
    if config.redis_url is None:
        return State(own_limits, own_slots)
    from proxy.state import fleet

    link, limits, slots, feed = fleet.build(config.redis_url.reveal(), config.redis_prefix,
                                            providers, own_limits, own_slots, health)
    return State(limits, slots, link, feed)
