"""Identical requests in flight (proxy/api/caching.py), without a server: the first leads,
the others wait on it; a follower that leaves does not stop the leader; a leader that leaves
without an answer lets those waiting go on by themselves."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from proxy.api.caching import Cacheable, Flights, Role, consult
from proxy.billing.cache_store import Found
from proxy.domain import Image, ImageResult, Served

CACHE = Cacheable("k", "tenant", 60, True)
SERVED = Served(ImageResult((Image("image/png", "aGk="),)), "m/h", "h", "u", Decimal("0.02"),
                ())


class NoStore:
    def get(self, key: str, not_before: int) -> Found | None:
        return None


async def roles(flights: Flights, count: int) -> list[Role]:
    return [await consult(flights, NoStore(), CACHE, "cheapest") for _ in range(count)]


def test_the_first_leads_and_the_others_share_its_answer() -> None:
    async def scenario() -> None:
        flights = Flights()
        leader, follower = await roles(flights, 2)
        assert (leader.how, follower.how) == ("miss", "coalesced")
        waiting = asyncio.create_task(follower.wait())
        await asyncio.sleep(0)
        leader.landed(SERVED)
        shared = await waiting
        assert shared is not None and shared.how == "coalesced"
        assert shared.made_for == Decimal("0.02") and shared.served.cost_usd == 0
        leader.close()
        (after,) = await roles(flights, 1)
        assert after.how == "miss", "a flight that landed and closed is gone"

    asyncio.run(scenario())


def test_a_follower_that_leaves_does_not_stop_the_leader() -> None:
    async def scenario() -> None:
        flights = Flights()
        leader, follower, other = await roles(flights, 3)
        leaving = asyncio.create_task(follower.wait())
        staying = asyncio.create_task(other.wait())
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        assert leader.flight is not None and not leader.flight.cancelled()
        leader.landed(SERVED)
        assert await staying is not None

    asyncio.run(scenario())


def test_a_leader_that_leaves_lets_the_others_go_on() -> None:
    async def scenario() -> None:
        flights = Flights()
        leader, follower = await roles(flights, 2)
        waiting = asyncio.create_task(follower.wait())
        await asyncio.sleep(0)
        leader.close()  # its client left before an answer
        assert await waiting is None  # the follower calls a host itself
        (after,) = await roles(flights, 1)
        assert after.how == "miss"

    asyncio.run(scenario())
