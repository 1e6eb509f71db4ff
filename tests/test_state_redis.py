"""proxy/state against a real Redis: a key's rpm, ipm and concurrency and a host's slots hold
for every replica at once, with the same headers and refusals as one process; leases a
replica stops renewing (killed with -9) run out; and a replica whose Redis goes away, freezes
or restarts empty goes on with its own state and comes back (issue 17, points 1, 2 and 6).

Each "replica" here is a Link of its own (its own client, leases and lease ids), as in a
serve process; tests/test_fleet_limits.py does the same with real serve processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from proxy import metrics
from proxy.billing.keys import KeyLimits, KeyRecord
from proxy.billing.limits import Admission, Limited, Limits
from proxy.catalog import Provider
from proxy.config import Config, Secret
from proxy.routing.slots import Slots
from proxy.state import State, build
from proxy.state import link as link_module
from proxy.state.fleet import FleetLimits, FleetSlots
from proxy.state.leases import Leases
from proxy.state.link import Link, open_link
from proxy.state.local import LocalLimits
from proxy.state.shared_limits import SharedLimits
from proxy.state.shared_slots import SharedSlots
from tests.fakes import scripted
from tests.redis_servers import REDIS_URL, PrivateRedis, private_redis, redis_prefix

__all__ = ["private_redis", "redis_prefix"]  # fixtures

T = TypeVar("T")
HOST = replace(scripted.route("fleet-host", "0.02").provider, max_in_flight=2)


def key(key_id: str = "key_fleet", **limits: int) -> KeyRecord:
    return KeyRecord(key_id, "k", "t", "sy-…abcd", 0, limits=KeyLimits(**limits))


@contextlib.asynccontextmanager
async def replica(prefix: str, url: str = REDIS_URL, lease_s: float = 5.0,
                  keep: bool = True) -> AsyncIterator[Link]:
    """One replica's link; `keep=False` never renews its leases (as if it were killed)."""
    link = open_link(url, prefix, Leases(lease_s))
    await (link.start() if keep else link.check())
    try:
        yield link
    finally:
        await link.close()


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())  # type: ignore[arg-type]


async def refused(admit: Awaitable[Admission]) -> Limited:
    with pytest.raises(Limited) as caught:
        await admit
    return caught.value


def test_rpm_answers_as_one_process_does(redis_prefix: str) -> None:
    """Same remaining counts, same refusal message, same header names; Retry-After is the
    rest of the minute."""
    async def go() -> None:
        async with replica(redis_prefix) as link:
            shared, local, record = SharedLimits(link), Limits(), key(rpm=3)
            for remaining in ("2", "1", "0"):
                admission = await shared.admit(record, 1)
                headers = admission.headers
                assert headers["x-ratelimit-remaining-requests"] == remaining
                assert headers.keys() == local.admit(record, 1).keys()
                await shared.done(admission)
            refusal = await refused(shared.admit(record, 1))
            with pytest.raises(Limited) as own:
                local.admit(record, 1)
            assert refusal.message.split(". Try")[0] == own.value.message.split(". Try")[0]
            assert refusal.headers["retry-after"] in ("60", "61")
            assert refusal.headers["x-ratelimit-remaining-requests"] == "0"
            assert refusal.headers["x-ratelimit-limit-requests"] == "3"
    run(go)


def test_ipm_counts_images_and_a_request_over_the_limit_waits_a_minute(
        redis_prefix: str) -> None:
    async def go() -> None:
        async with replica(redis_prefix) as link:
            shared, record = SharedLimits(link), key(ipm=4)
            await shared.admit(record, 3)
            assert "used 3, requested 2" in (await refused(shared.admit(record, 2))).message
            assert (await refused(shared.admit(record, 5))).headers["retry-after"] == "60"
            headers = (await shared.admit(record, 1)).headers
            assert headers["x-ratelimit-remaining-images"] == "0"
    run(go)


def test_three_replicas_share_one_key_s_limits(redis_prefix: str) -> None:
    """rpm 6 across three replicas: exactly 6 admitted, whichever replica asks; concurrency 2
    across them: the third at once is refused until one is done."""
    async def go() -> None:
        async with replica(redis_prefix) as a, replica(redis_prefix) as b, \
                replica(redis_prefix) as c:
            limits = [SharedLimits(link) for link in (a, b, c)]
            record = key(rpm=6)
            admitted = 0
            for i in range(12):
                with contextlib.suppress(Limited):
                    admission = await limits[i % 3].admit(record, 1)
                    admitted += 1
                    await limits[i % 3].done(admission)
            assert admitted == 6
            both = key(concurrency=2)
            first = await limits[0].admit(both, 1)
            await limits[1].admit(both, 1)
            refusal = await refused(limits[2].admit(both, 1))
            assert "allows 2 requests at once" in refusal.message
            assert refusal.headers["retry-after"] == "1"
            await limits[0].done(first)  # removed before done returns: the next is admitted
            await limits[2].admit(both, 1)
    run(go)


def test_a_window_stays_bounded_whatever_the_rate(redis_prefix: str) -> None:
    """Events within MERGE_S share one entry, as in one process."""
    async def go() -> None:
        async with replica(redis_prefix) as link:
            shared, record = SharedLimits(link), key()
            for _ in range(200):
                admission = await shared.admit(record, 2)
                assert admission.headers == {}
                await shared.done(admission)
            entries = await link.client.llen(f"{redis_prefix}:key:{{{record.id}}}:window")
            assert 1 <= entries <= 10
            totals = await link.client.hgetall(f"{redis_prefix}:key:{{{record.id}}}:totals")
            assert totals == {b"requests": b"200", b"images": b"400"}
    run(go)


def test_a_host_cap_holds_across_replicas(redis_prefix: str) -> None:
    async def go() -> None:
        async with replica(redis_prefix) as a, replica(redis_prefix) as b:
            first, second = SharedSlots(a, [HOST]), SharedSlots(b, [HOST])
            held = await first.acquire(HOST, 0)
            assert held is not None and await second.acquire(HOST, 0)
            assert await first.free() == 0
            started = time.monotonic()
            assert not await second.acquire(HOST, 0.2)
            assert 0.2 <= time.monotonic() - started < 0.5
            waiting = asyncio.create_task(second.acquire(HOST, 2.0))
            await asyncio.sleep(0.1)
            first.release(held)  # another replica's release: seen by the next try
            assert await waiting
            assert second.in_use(HOST) == 2 and first.in_use(HOST) == 0
            assert (first.capacity, second.held) == (2, 2)
    run(go)


def test_a_killed_replica_s_slots_come_back_within_a_lease(redis_prefix: str) -> None:
    """A replica that stops renewing (kill -9) holds its slots and its key's concurrency for
    at most one lease time; a live one keeps its own past many lease times."""
    async def go() -> None:
        async with replica(redis_prefix, lease_s=0.5, keep=False) as dead, \
                replica(redis_prefix, lease_s=0.5) as live:
            assert await SharedSlots(dead, [HOST]).acquire(HOST, 0)
            assert await SharedSlots(live, [HOST]).acquire(HOST, 0)
            record = key(concurrency=1)
            await SharedLimits(dead).admit(record, 1)
            survivor = SharedSlots(live, [HOST])
            assert not await survivor.acquire(HOST, 0)
            await refused(SharedLimits(live).admit(record, 1))
            started = time.monotonic()
            assert await survivor.acquire(HOST, 2.0)  # the dead one's lease ran out
            assert 0.3 < time.monotonic() - started < 0.8
            await SharedLimits(live).admit(record, 1)
            await asyncio.sleep(1.5)  # three lease times: the live replica renewed them
            assert await survivor.free() == 0
            await refused(SharedLimits(live).admit(record, 1))
    run(go)


def test_an_admission_takes_the_first_host_s_slot_and_carries_releases(
        private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """One round trip per request: the admission takes a slot of the request's first host
    when one is free (HOST's cap is 2), none when the key is refused, and carries the
    releases made since the last call (no ZREM of their own)."""
    monkeypatch.setattr(link_module, "CARRY_S", 2.0)  # the loop would send them only later

    async def go() -> None:
        async with replica("fleet", private_redis.url) as link:
            slots = SharedSlots(link, [HOST])
            limits, record = SharedLimits(link, slots), key(rpm=2)
            first = await limits.admit(record, 1, HOST)
            second = await limits.admit(record, 1, HOST)
            assert first.slot is not None and second.slot is not None
            assert slots.in_use(HOST) == 2 and await slots.free() == 0
            await refused(limits.admit(record, 1, HOST))  # rpm 2 used up...
            assert slots.in_use(HOST) == 2  # ... and no slot taken for it
            slots.release(first.slot)
            assert link.leases.pending  # the loop waits CARRY_S before sending it
            third = await limits.admit(key("key_other"), 1, HOST)
            assert third.slot is not None, "the release rode on this admission"
            assert not link.leases.pending
    run(go)


def test_a_request_woken_by_a_release_here_finds_the_slot_free(
        private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host slot script carries this replica's releases, as the admission does: the
    waiter woken by a local release gets that slot at once, not when the lease loop has sent
    the release (here held back 2 s)."""
    monkeypatch.setattr(link_module, "CARRY_S", 2.0)
    single = replace(HOST, max_in_flight=1)

    async def go() -> float:
        async with replica("fleet", private_redis.url) as link:
            slots = SharedSlots(link, [single])
            held = await slots.acquire(single, 0)
            assert held is not None
            waiting = asyncio.create_task(slots.acquire(single, 3.0))
            await asyncio.sleep(0.1)
            released = time.monotonic()
            slots.release(held)
            assert await waiting is not None
            return time.monotonic() - released
    took = run(go)
    assert took < 0.5, f"the waiter got the slot {took:.2f} s after its release"


def fleet_state(url: str, prefix: str, providers: list[Provider]) -> State:
    config = Config(redis_url=Secret(url), redis_prefix=prefix)
    return build(config, providers)


def test_single_process_state_imports_nothing_of_redis() -> None:
    state = build(Config(), [HOST])
    assert isinstance(state.limits, LocalLimits) and isinstance(state.slots, Slots)
    assert state.describe() == {"mode": "single"}
    code = ("import sys, proxy.app, proxy.cli; from proxy.config import Config; "
            "from proxy.state import build; build(Config(), []); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    assert found.stdout.strip() == "[]"


def test_redis_away_then_back_empty(private_redis: PrivateRedis,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Down: requests are answered at once by the replica's own state (one log line, the gauge
    at 0); restarted empty: shared again within seconds, a request still running counted
    again (its lease is renewed), and nothing leaked by the outage."""
    async def go() -> None:
        state = fleet_state(private_redis.url, "fleet", [HOST])
        assert isinstance(state.limits, FleetLimits) and isinstance(state.slots, FleetSlots)
        await state.start()
        try:
            record = key(concurrency=1)
            assert state.describe() == {"mode": "fleet", "redis": "shared"}
            assert metrics.FLEET_SHARED._value.get() == 1
            running = await state.limits.admit(record, 1)  # through the outage: shared
            private_redis.kill()
            started = time.monotonic()
            for _ in range(20):  # the replica's own
                await state.limits.admit(key("key_other"), 1)
                slot = await state.slots.acquire(HOST, 0)
                assert slot is not None
                state.slots.release(slot)
            assert time.monotonic() - started < 1.0
            assert state.describe() == {"mode": "fleet", "redis": "unreachable"}
            assert metrics.FLEET_SHARED._value.get() == 0
            private_redis.start()  # empty
            await until(lambda: state.describe()["redis"] == "shared", 3.0)
            await asyncio.sleep(0.1)  # the renewal that follows the check
            await refused(state.limits.admit(record, 1))  # still running, counted again
            await state.limits.done(running)
            await asyncio.sleep(0.1)
            await state.limits.admit(record, 1)
        finally:
            await state.aclose()
        lines = [r.getMessage() for r in caplog.records if r.name == "switchyard.fleet"]
        assert len([line for line in lines if "not answering" in line]) == 1, lines
        assert len([line for line in lines if "shared by the fleet" in line]) == 2, lines
    caplog.set_level(logging.INFO, "switchyard.fleet")
    run(go)


def test_a_request_gives_back_what_it_took_across_an_outage(
        private_redis: PrivateRedis) -> None:
    """concurrency 1: A admitted by the fleet, B by the replica's own state while Redis was
    away. A ending hands back A's lease, not B's own count, so C is admitted at once (before,
    A's lease lived on until B ended)."""
    async def go() -> None:
        state = fleet_state(private_redis.url, "fleet", [HOST])
        await state.start()
        try:
            record = key(concurrency=1)
            a = await state.limits.admit(record, 1)
            private_redis.kill()
            b = await state.limits.admit(record, 1)
            assert (a.lease is not None, b.lease) == (True, None)
            private_redis.start()
            await until(lambda: state.describe()["redis"] == "shared", 3.0)
            await asyncio.sleep(0.1)  # A's lease written back: it still runs
            await state.limits.done(a)
            c = await state.limits.admit(record, 1)
            await state.limits.done(b)
            await state.limits.done(c)
        finally:
            await state.aclose()
    run(go)


def test_a_frozen_redis_costs_a_request_at_most_a_timeout(private_redis: PrivateRedis) -> None:
    """Redis that stops answering (a stall, not a refusal): the first request waits out the
    short timeout, the rest go straight to the replica's own state."""
    async def go() -> None:
        state = fleet_state(private_redis.url, "fleet", [HOST])
        await state.start()
        try:
            private_redis.freeze()
            times = []
            for _ in range(10):
                started = time.monotonic()
                await state.limits.admit(key(rpm=100), 1)
                slot = await state.slots.acquire(HOST, 0)
                assert slot is not None
                state.slots.release(slot)
                times.append(time.monotonic() - started)
            assert max(times) < 0.6 and sum(times[1:]) < 0.05, times
            private_redis.thaw()
            await until(lambda: state.describe()["redis"] == "shared", 3.0)
        finally:
            await state.aclose()
    run(go)


async def until(condition: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
