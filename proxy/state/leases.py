"""This replica's leases in Redis: the slots and key concurrency it holds, by lease id.

A lease is written with an expiry (LEASE_S) and renewed with every other live lease of the
replica in one round trip every second (LEASE_S / RENEWALS), so a replica killed with -9
holds nothing once its leases run out. A release leaves the renewal set at once; its ZREM
rides on the replica's next admission (no round trip of its own) or is sent by the loop that
renews, and never while a renewal that could write it back is on its way. While Redis is away
a release waits for it a lease's time: a Redis that was frozen or cut off (not restarted empty)
still holds the lease until then, and a key at its concurrency would be refused for it.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from proxy.state import scripts

if TYPE_CHECKING:
    from redis.asyncio import Redis

# A lease set, a lease id, and when it was released (time.monotonic()).
Released = tuple[str, str, float]
LEASE_S = 5.0  # a dead replica's slots come back within this
RENEWALS = 5  # renewals per lease time (every second): a late one or two cost nothing


class Leases:
    def __init__(self, lease_s: float = LEASE_S) -> None:
        self.lease_ms = round(lease_s * 1000)
        self.renew_s = lease_s / RENEWALS
        self._prefix = secrets.token_hex(6)  # this process; ids never repeat across replicas
        self._ids = itertools.count()
        self._held: defaultdict[str, set[str]] = defaultdict(set)  # lease set -> ids
        self._released: list[Released] = []
        self._renewing = False  # a renewal is on its way: releases wait for the loop

    def new_id(self) -> str:
        return f"{self._prefix}:{next(self._ids)}"

    def hold(self, where: str, lease: str) -> None:
        self._held[where].add(lease)

    def release(self, where: str, lease: str) -> None:
        """Stop renewing the lease; the next flush removes it from Redis."""
        held = self._held.get(where)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[where]
        self._released.append((where, lease, time.monotonic()))

    @property
    def pending(self) -> bool:
        """Releases not yet sent."""
        return bool(self._released)

    def count(self) -> int:
        return sum(len(ids) for ids in self._held.values())

    def take_released(self) -> list[Released]:
        """The releases not yet sent, for a call about to go (none while a renewal that
        holds some of them may still land after it)."""
        if self._renewing or not self._released:
            return []
        released, self._released = self._released, []
        return released

    def give_back(self, released: list[Released]) -> None:
        """Releases taken for a call that failed: the loop sends them when Redis answers."""
        self._released[:0] = released

    def forget_expired(self, now: float) -> None:
        """Redis is away: a release older than a lease has run out there by itself (nothing
        renews it meanwhile); the others wait for Redis."""
        oldest = now - self.lease_ms / 1000
        self._released = [release for release in self._released if release[2] > oldest]

    async def flush(self, client: Redis) -> None:
        """Send the releases made so far, in one pipelined round trip."""
        released, self._released = self._released, []
        if released:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for where, lease, _ in released:
                        pipe.zrem(where, lease)
                    await pipe.execute()
            except BaseException:  # Redis refused or is away: they wait for it
                self.give_back(released)
                raise

    async def renew(self, client: Redis) -> None:
        """Write every live lease of this replica again with a fresh expiry."""
        if not self._held:
            return
        keys = list(self._held)
        args: list[str | int] = [self.lease_ms]
        for where in keys:
            ids = self._held[where]
            args += [len(ids), *ids]
        self._renewing = True
        try:
            await client.eval(scripts.RENEW, len(keys), *keys, *args)
        finally:
            self._renewing = False
