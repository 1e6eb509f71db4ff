"""Redis in trouble without being restarted empty (issue 17, point 6).

Frozen or cut off: its data outlives the outage, so what a replica released meanwhile must be
removed there once it answers again. Before, a release made while Redis was away was dropped
("it runs out there by itself"): a key at its `concurrency` was refused, and a host's slots
looked taken fleet-wide, until the leases ran out up to 5 s later (helper-44).

Answering PING but refusing writes (a replica left read-only by a failover, or one out of
memory): the fleet's scripts all fail there, so it is Redis away, said once. Before, the check
(a PING) called it back every second and the next request lost it again: two log lines and a
fallback counted each second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis

from proxy import metrics
from proxy.state.leases import Leases
from tests.redis_servers import PrivateRedis, private_redis
from tests.serving import free_port
from tests.test_state_redis import HOST, fleet_state, key, run, until

__all__ = ["private_redis"]  # a fixture


def test_a_request_ended_during_a_freeze_frees_its_concurrency_once_redis_answers(
        private_redis: PrivateRedis) -> None:
    async def go() -> None:
        state = fleet_state(private_redis.url, "fleet", [HOST])
        await state.start()
        try:
            record = key(concurrency=1)
            first = await state.limits.admit(record, 1)
            assert first.fleet
            await asyncio.sleep(1.1)  # renewed: its lease lives 5 s from now
            private_redis.freeze()
            await state.limits.admit(key("key_other"), 1)  # finds Redis away
            assert state.describe()["redis"] == "unreachable"
            await state.limits.done(first)  # it ends while Redis is away
            await asyncio.sleep(0.1)
            private_redis.thaw()
            await until(lambda: state.describe()["redis"] == "shared", 3.0)
            await asyncio.sleep(0.2)
            second = await state.limits.admit(record, 1)  # nothing of the key runs anywhere
            assert second.fleet
            await state.limits.done(second)
        finally:
            await state.aclose()
    run(go)


async def _both_slots(state: Any) -> list[Any]:
    """HOST's two slots, held and renewed once: their leases live 5 s from now."""
    await state.start()
    held = [await state.slots.acquire(HOST, 0) for _ in range(2)]
    assert all(slot is not None and slot.lease for slot in held)
    await asyncio.sleep(1.1)
    return held


def test_a_slot_released_during_a_freeze_is_free_once_redis_answers(
        private_redis: PrivateRedis) -> None:
    async def go() -> None:
        state = fleet_state(private_redis.url, "fleet", [HOST])  # HOST's cap is 2
        try:
            held = await _both_slots(state)
            private_redis.freeze()
            await state.limits.admit(key("key_other"), 1)
            assert state.describe()["redis"] == "unreachable"
            for slot in held:
                state.slots.release(slot)
            await asyncio.sleep(0.1)
            private_redis.thaw()
            await until(lambda: state.describe()["redis"] == "shared", 3.0)
            await asyncio.sleep(0.2)
            assert await state.slots.free() == 2, "released slots still held in Redis"
        finally:
            await state.aclose()
    run(go)


def test_while_redis_is_away_only_releases_older_than_a_lease_are_dropped() -> None:
    """They have run out in Redis by then (nothing renews them): keeping them would only
    grow."""
    leases = Leases(lease_s=5.0)
    leases.release("live", "old")
    leases.forget_expired(time.monotonic() + 1.0)
    assert leases.pending
    leases.forget_expired(time.monotonic() + 5.1)
    assert not leases.pending


def test_a_redis_that_refuses_writes_is_one_fallback_not_one_a_second(
        caplog: pytest.LogCaptureFixture) -> None:
    # A replica of a master nobody serves: it answers PING, and refuses every write.
    server = PrivateRedis("--replicaof", "127.0.0.1", str(free_port()))
    server.start()
    caplog.set_level(logging.INFO, "switchyard.fleet")

    async def go() -> None:
        state = fleet_state(server.url, "fleet", [HOST])
        await state.start()
        fallbacks = metrics.FLEET_FALLBACKS._value.get()
        try:
            ends = time.monotonic() + 3.5
            while time.monotonic() < ends:  # a request every 20 ms
                admission = await state.limits.admit(key("k", rpm=100_000), 1)
                await state.limits.done(admission)
                await asyncio.sleep(0.02)
            assert state.describe()["redis"] == "unreachable"
        finally:
            await state.aclose()
        lines = [r.getMessage() for r in caplog.records if r.name == "switchyard.fleet"]
        assert not [line for line in lines if "Redis answers" in line], lines[:6]
        assert metrics.FLEET_FALLBACKS._value.get() - fallbacks <= 1
    try:
        run(go)
    finally:
        server.kill()


def test_slots_released_while_redis_refuses_writes_are_free_once_it_takes_them(
        private_redis: PrivateRedis) -> None:
    """Redis turns read-only (a failover) before the replica has noticed anything: the
    releases its loop then sends are refused, and wait for Redis too (helper-47: they were
    dropped, and the slots stayed taken until their leases ran out)."""
    admin = redis.Redis.from_url(private_redis.url)

    async def go() -> None:
        state = fleet_state(private_redis.url, "fleet", [HOST])  # HOST's cap is 2
        try:
            held = await _both_slots(state)
            admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # data kept
            for slot in held:
                state.slots.release(slot)  # the loop's flush sends them and is refused
            await until(lambda: state.describe()["redis"] == "unreachable", 3.0)
            admin.execute_command("REPLICAOF", "NO", "ONE")
            await until(lambda: state.describe()["redis"] == "shared", 3.0)
            await asyncio.sleep(0.3)
            assert await state.slots.free() == 2, "released slots still held in Redis"
        finally:
            await state.aclose()
    try:
        run(go)
    finally:
        admin.close()
