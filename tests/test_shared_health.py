"""Route health shared through Redis (issue 17, point 3): what one replica learns about a
route, every replica applies within a flush and a hop, so the same five failures open the
breaker everywhere, a Retry-After rests the host fleet-wide, and a recovery closes it
fleet-wide; the request path reads only its own memory. Each "replica" is a Health with a
Link and a HealthFeed of its own, as in a serve process (tests/test_fleet_shared.py drives
real serve processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from proxy import state as fleet_state
from proxy.catalog import Route
from proxy.config import Secret
from proxy.failures import Failure, Kind
from proxy.routing.health import Health, Outcome, State
from proxy.routing.slots import Slots
from proxy.state import shared_slots
from proxy.state.held import held_out
from proxy.state.leases import Leases
from proxy.state.link import open_link
from proxy.state.local import LocalLimits
from proxy.state.shared_health import HealthFeed, decode, encode
from proxy.state.shared_slots import SharedSlots
from tests.fakes import scripted
from tests.redis_servers import REDIS_URL, PrivateRedis, private_redis, redis_prefix

__all__ = ["private_redis", "redis_prefix"]  # fixtures

ROUTE = scripted.route("shared-host", "0.02")
BROKEN = Failure(Kind.UPSTREAM_BROKEN, "500 from the host")


class Clock:
    """time.monotonic, moved on at will (past a breaker's cooldown)."""

    def __init__(self) -> None:
        self.ahead_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead_s


@contextlib.asynccontextmanager
async def replica(prefix: str, url: str = REDIS_URL, clock: Clock | None = None,
                  routes: tuple[Route, ...] = (ROUTE,)) -> AsyncIterator[Health]:
    health = Health(routes, clock=clock or Clock())
    link = open_link(url, prefix, Leases())
    feed = HealthFeed(link, health)
    await link.start()
    feed.start()
    await asyncio.sleep(0.1)  # subscribed before the test publishes
    try:
        yield health
    finally:
        await feed.aclose()
        await link.close()


def attempt(health: Health, failure: Failure | None) -> None:
    route = health.of(ROUTE)
    route.end(route.begin(), "1K", failure)


async def kept(prefix: str, which: str, route_id: str = ROUTE.id, present: bool = True,
               url: str = REDIS_URL, within_s: float = 2.0) -> None:
    """Wait until Redis holds the route out (`which`: "open" or "rest"), or no longer does."""
    client = Redis.from_url(url)
    try:
        started = time.monotonic()
        while (await client.zscore(f"{prefix}:{{health}}:{which}", route_id) is not None) \
                is not present:
            assert time.monotonic() - started < within_s, \
                f"never {'kept' if present else 'gone'}"
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def until(check: Callable[[], bool], within_s: float = 2.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, "never happened"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_five_failures_on_one_replica_open_the_breaker_on_the_others(
        redis_prefix: str) -> None:
    async def go() -> None:
        async with replica(redis_prefix) as a, replica(redis_prefix) as b, \
                replica(redis_prefix) as c:
            for _ in range(4):
                attempt(a, BROKEN)
            await asyncio.sleep(0.3)
            assert b.of(ROUTE).state is State.CLOSED  # four are not yet five
            attempt(c, BROKEN)  # the fifth, on another replica
            took = await until(lambda: all(h.of(ROUTE).state is State.OPEN for h in (a, b, c)))
            assert took < 0.5, took
            assert not b.snapshots([ROUTE], "1K")[ROUTE.id].available
    asyncio.run(go())


def test_a_retry_after_rests_the_host_fleet_wide_and_a_recovery_is_seen_by_all(
        redis_prefix: str) -> None:
    async def go() -> None:
        async with replica(redis_prefix) as a, replica(redis_prefix) as b:
            attempt(a, Failure(Kind.RATE_LIMITED, "429", retry_after_s=30))
            await until(lambda: not b.snapshots([ROUTE], "1K")[ROUTE.id].available)
            assert b.of(ROUTE).state is State.CLOSED  # a rest, not a broken host

        clock = Clock()
        async with replica(redis_prefix, clock=clock) as a, \
                replica(redis_prefix, clock=clock) as b:
            for _ in range(5):
                attempt(a, BROKEN)
            await until(lambda: b.of(ROUTE).state is State.OPEN)
            clock.ahead_s = 10  # past the cooldown: half-open on both
            attempt(a, None)  # a's probe finds the host well again
            await until(lambda: b.of(ROUTE).state is State.CLOSED)
            # Closing the breaker starts its window afresh, on both: the failures were the
            # outage's, and would keep the recovered host behind.
            recovered = b.snapshots([ROUTE], "1K")[ROUTE.id]
            assert (recovered.samples, recovered.success_ratio) == (1, 1.0)
    asyncio.run(go())


def test_an_attempt_ended_elsewhere_wakes_a_request_waiting_here_for_its_host(
        redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """B's request waits for HOST's only slot, held by A; A's attempt ends: B tries again at
    once (on A's published outcome), not at its next poll."""
    host = ROUTE.provider
    monkeypatch.setattr(shared_slots, "PATIENT_POLL_S", 2.0)  # its poll would be >= 1 s

    async def go() -> float:
        from dataclasses import replace

        capped = replace(host, max_in_flight=1)
        a_link, b_link = (open_link(REDIS_URL, redis_prefix, Leases()) for _ in "ab")
        a_health, b_health = Health([ROUTE]), Health([ROUTE])
        a_slots = SharedSlots(a_link, [capped])
        b_slots = SharedSlots(b_link, [capped])
        feeds = [HealthFeed(a_link, a_health, a_slots.freed),
                 HealthFeed(b_link, b_health, b_slots.freed)]
        for link in (a_link, b_link):
            await link.start()
        for feed in feeds:
            feed.start()
        await asyncio.sleep(0.1)
        try:
            held = await a_slots.acquire(capped, 0)
            assert held is not None
            waiting = asyncio.create_task(b_slots.released([capped], 5.0))
            await asyncio.sleep(0.05)
            a_slots.release(held)
            ended = time.monotonic()
            attempt(a_health, None)  # A's attempt on the host ended
            await waiting
            return time.monotonic() - ended
        finally:
            for feed in feeds:
                await feed.aclose()
            for link in (a_link, b_link):
                await link.close()

    woke = asyncio.run(go())
    assert woke < 0.5, f"woke after {woke:.2f} s"


def test_latency_samples_are_the_fleet_s() -> None:
    """B learns A's latencies (EWMA and p95) without a single attempt of its own."""
    a, b = Health([ROUTE]), Health([ROUTE])
    heard: list[Outcome] = []
    a.listen(heard.append)
    route = a.of(ROUTE)
    for _ in range(10):
        token = route.begin()
        route._starts[token] -= 3.0  # each took three seconds
        route.end(token, "1K", None)
    for outcome in decode(encode("a", heard))[1]:
        b.observe(outcome)
    seen = b.snapshots([ROUTE], "1K")[ROUTE.id]
    assert seen.samples == 10 and 2.9 < seen.p95_s < 3.1 and 2.5 < seen.expected_s < 3.1
    assert seen.in_flight == 0


def test_a_replica_that_starts_later_learns_the_fleet_s_open_breaker(
        redis_prefix: str) -> None:
    """A message reaches only the replicas listening then: one started after (a rolling
    deploy) reads the breakers open from Redis, for the time they have left, then probes as
    any replica does."""
    async def go() -> None:
        async with replica(redis_prefix) as a:
            for _ in range(5):
                attempt(a, BROKEN)
            assert a.of(ROUTE).state is State.OPEN
            left_s = a.of(ROUTE).held_out()[0]
            await kept(redis_prefix, "open")
            clock = Clock()
            async with replica(redis_prefix, clock=clock) as b:
                assert b.of(ROUTE).state is State.OPEN
                assert not b.snapshots([ROUTE], "1K")[ROUTE.id].available
                assert 0 < b.of(ROUTE).held_out()[0] <= left_s
                clock.ahead_s = left_s  # the fleet's open period is over: a probe is due
                assert b.of(ROUTE).state is State.HALF_OPEN
                assert b.snapshots([ROUTE], "1K")[ROUTE.id].available
    asyncio.run(go())


def test_a_replica_that_starts_later_keeps_the_fleet_s_rest(redis_prefix: str) -> None:
    """A Retry-After rests the host for a replica started during it too, for what is left
    of it (not a fresh 30 s)."""
    async def go() -> None:
        async with replica(redis_prefix) as a:
            told = time.monotonic()
            attempt(a, Failure(Kind.RATE_LIMITED, "429", retry_after_s=30))
            await kept(redis_prefix, "rest")
            await asyncio.sleep(0.5 - (time.monotonic() - told))
            clock = Clock()
            async with replica(redis_prefix, clock=clock) as b:
                assert not b.snapshots([ROUTE], "1K")[ROUTE.id].available
                assert b.of(ROUTE).state is State.CLOSED  # a rest, not a broken host
                clock.ahead_s = 29.0
                assert not b.snapshots([ROUTE], "1K")[ROUTE.id].available
                clock.ahead_s = 29.8  # past what was left (at most 29.5 s): not a fresh 30
                assert b.snapshots([ROUTE], "1K")[ROUTE.id].available
    asyncio.run(go())


def test_a_breaker_other_replicas_outcomes_opened_is_kept_too(redis_prefix: str) -> None:
    """Failures spread over replicas (three here, two there, within one flush) open the
    breaker on each one that hears them all, though none was open when it published its
    own: what a replica opens on others' outcomes is kept too, for a later replica to read.
    (Here the failures come from a sender that keeps nothing itself.)"""
    async def go() -> None:
        async with replica(redis_prefix) as b:
            publisher = open_link(REDIS_URL, redis_prefix, Leases())
            failed = Outcome(ROUTE.id, "1K", 0.1, False)
            for _ in range(5):
                await publisher.client.publish(f"{redis_prefix}:health",
                                               encode("elsewhere", [failed]))
            await until(lambda: b.of(ROUTE).state is State.OPEN)
            await kept(redis_prefix, "open")  # b's publisher's turn
            await publisher.close()
            async with replica(redis_prefix) as late:
                assert late.of(ROUTE).state is State.OPEN
    asyncio.run(go())


def test_a_starting_replica_has_read_what_is_held_out_before_it_serves(
        redis_prefix: str) -> None:
    """State.start returns (and the app starts serving) once the feed has read Redis."""
    async def go() -> None:
        async with replica(redis_prefix) as a:
            attempt(a, Failure(Kind.RATE_LIMITED, "429", retry_after_s=30))
            await kept(redis_prefix, "rest")
            health = Health([ROUTE])
            link = open_link(REDIS_URL, redis_prefix, Leases())
            state = fleet_state.State(LocalLimits(), Slots([ROUTE.provider]), link,
                                      HealthFeed(link, health))
            await state.start()
            try:
                assert not health.snapshots([ROUTE], "1K")[ROUTE.id].available
            finally:
                await state.aclose()
    asyncio.run(go())


def test_a_breaker_closed_before_its_end_is_taken_out(redis_prefix: str) -> None:
    """A's probe finds the host well while B's open period still runs: B closes and takes
    the entry out, so a replica that starts then does not keep a well host out."""
    async def go() -> None:
        ahead = Clock()
        async with replica(redis_prefix, clock=ahead) as a, replica(redis_prefix) as b:
            for _ in range(5):
                attempt(a, BROKEN)
            await until(lambda: b.of(ROUTE).state is State.OPEN)
            await kept(redis_prefix, "open")
            ahead.ahead_s = 10  # A only: past its cooldown, its probe goes
            attempt(a, None)
            await until(lambda: b.of(ROUTE).state is State.CLOSED)
            await kept(redis_prefix, "open", present=False)
            async with replica(redis_prefix) as late:
                assert late.of(ROUTE).state is State.CLOSED
                assert late.snapshots([ROUTE], "1K")[ROUTE.id].available
    asyncio.run(go())


def test_a_refused_credential_s_rest_is_not_kept(redis_prefix: str) -> None:
    """A host that refused the key rests it 300 s on the replicas that heard; a replica that
    starts later (after the key was fixed, say) does not inherit it."""
    plain = scripted.route("keyed-host", "0.02")
    keyed = replace(plain, provider=replace(plain.provider, key=Secret("sk-old")))

    async def go() -> None:
        async with replica(redis_prefix, routes=(keyed,)) as a:
            route = a.of(keyed)
            route.end(route.begin(), "1K", Failure(Kind.AUTH, "401 from the host"))
            assert a.snapshots([keyed], "1K")[keyed.id].refused
            await asyncio.sleep(0.3)
            async with replica(redis_prefix, routes=(keyed,)) as late:
                assert late.snapshots([keyed], "1K")[keyed.id].available
    asyncio.run(go())


def test_what_redis_holds_out_is_read_whatever_its_shape() -> None:
    assert held_out([1, b"m/a", 1500, 2, b"m/a", 30000, b"m/b", 20]) == [
        ("m/a", 1.5, 30.0), ("m/b", 0.0, 0.02)]
    assert held_out([0, 0]) == [] and held_out(None) == [] and held_out([3, b"m/a"]) == []
    assert held_out([1, b"m/a", -5, 1, 7, 9]) == []  # ended, and an id that is no string
    assert held_out([-5]) == [] and held_out([-1, 2, b"m/a", 9, 1, b"m/b", 7]) == []


def test_what_is_no_evidence_is_not_published_and_junk_is_not_applied() -> None:
    a = Health([ROUTE])
    heard: list[Outcome] = []
    a.listen(heard.append)
    attempt(a, Failure(Kind.BAD_REQUEST, "the client's own"))
    assert heard == []
    b = Health([ROUTE])
    assert decode(b"not json") == ("", [])
    assert decode(b"[1, 2]") == ("", [])  # JSON, but not a batch
    sender, outcomes = decode(b'{"from": "x", "outcomes": [["m/shared-host", "1K"], 5]}')
    assert (sender, outcomes) == ("x", [])
    b.observe(Outcome("m/unknown-route", "1K", 1.0, False))  # another catalog's route
    assert b.of(ROUTE).state is State.CLOSED


def test_redis_restarted_empty_sharing_resumes(private_redis: PrivateRedis) -> None:
    """Down: each replica keeps its own evidence (nothing raised); back: they subscribe again
    and share within seconds."""
    async def go() -> None:
        async with replica("fleet", private_redis.url) as a, \
                replica("fleet", private_redis.url) as b:
            private_redis.kill()
            for _ in range(5):
                attempt(a, BROKEN)
            assert a.of(ROUTE).state is State.OPEN
            await asyncio.sleep(0.5)
            assert b.of(ROUTE).state is State.CLOSED  # nothing crossed while Redis was away
            private_redis.start()
            other = scripted.route("other-host", "0.03")
            a.of(other), b.of(other)

            async def shared_again() -> bool:
                for _ in range(5):
                    a.of(other).end(a.of(other).begin(), "1K", BROKEN)
                await asyncio.sleep(0.3)
                return b.of(other).state is State.OPEN

            started = time.monotonic()
            while not await shared_again():
                assert time.monotonic() - started < 8, "sharing never resumed"
            print(f"\nshared again {time.monotonic() - started:.2f} s after Redis came back")
    asyncio.run(go())
