"""Interactive requests come before batch items for a host's slots (proxy/routing/slots.py),
in one process and across a fleet's replicas in Redis (proxy/state/shared_slots.py): a batch
item takes no slot while an interactive request waits, and a slot a batch item holds is owed
to a waiting interactive request, which waits for it past the usual bounded wait; a slot an
interactive request holds is owed to no one."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from proxy.routing.slots import Slots
from proxy.state.shared_slots import SharedSlots
from tests.fakes import scripted
from tests.redis_servers import redis_prefix
from tests.test_state_redis import replica

__all__ = ["redis_prefix"]  # a fixture

HOST = replace(scripted.route("first-host", "0.02").provider, max_in_flight=1)
WAIT_S = 0.1  # the usual bounded wait, short here


def test_a_freed_slot_goes_to_the_interactive_request_not_the_batch_item() -> None:
    async def go() -> tuple[bool, bool, bool]:
        slots = Slots([HOST], wait_s=WAIT_S)
        held = await slots.acquire(HOST, 0, patient=True)
        assert held is not None
        asking = asyncio.create_task(slots.acquire(HOST, 5.0))
        await asyncio.sleep(0.01)
        batch_refused = await slots.acquire(HOST, 0, patient=True) is None
        slots.release(held)
        got = await asyncio.wait_for(asking, 1.0)
        again = await slots.acquire(HOST, 0, patient=True) is None
        return batch_refused, got is not None and not got.patient, again

    assert asyncio.run(go()) == (True, True, True)


def test_an_interactive_request_waits_for_a_slot_a_batch_item_owes_it() -> None:
    """The usual wait is 0.1 s; a batch item's call ends after 0.5 s and its slot goes to
    the interactive request waiting. Held by an interactive call instead, no debt: None after
    the usual wait."""
    async def go(patient_holder: bool) -> tuple[bool, float]:
        slots = Slots([HOST], wait_s=WAIT_S)
        held = await slots.acquire(HOST, 0, patient=patient_holder)
        assert held is not None
        asyncio.get_running_loop().call_later(0.5, slots.release, held)
        started = time.monotonic()
        got = await slots.acquire(HOST, WAIT_S, owed_s=5.0)
        return got is not None, time.monotonic() - started

    owed, waited = asyncio.run(go(patient_holder=True))
    assert owed and 0.4 < waited < 2.0
    not_owed, gave_up = asyncio.run(go(patient_holder=False))
    assert not not_owed and gave_up < 0.4


def test_only_as_many_wait_for_owed_slots_as_batch_items_hold() -> None:
    async def go() -> list[bool]:
        two = replace(HOST, max_in_flight=2)
        slots = Slots([two], wait_s=WAIT_S)
        batch = await slots.acquire(two, 0, patient=True)
        mine = await slots.acquire(two, 0)
        assert batch is not None and mine is not None
        waiters = [asyncio.create_task(slots.acquire(two, WAIT_S, owed_s=5.0))
                   for _ in range(3)]
        await asyncio.sleep(0.3)  # past the usual wait: only the first is still waiting
        slots.release(batch)
        return [(await w) is not None for w in waiters]

    assert asyncio.run(go()) == [True, False, False]


def test_across_replicas_a_batch_item_waits_while_an_interactive_request_does(
        redis_prefix: str) -> None:
    """Replica a's batch item holds the host's one slot; replica b's interactive request
    waits past its usual 0.1 s for it, and replica a's next batch item is refused meanwhile
    (and again once the interactive request holds the slot)."""
    async def go() -> tuple[bool, bool, float, bool]:
        async with replica(redis_prefix) as a, replica(redis_prefix) as b:
            first, second = SharedSlots(a, [HOST], WAIT_S), SharedSlots(b, [HOST], WAIT_S)
            held = await first.acquire(HOST, 0, patient=True)
            assert held is not None and held.lease is not None and held.patient
            started = time.monotonic()
            asking = asyncio.create_task(second.acquire(HOST, WAIT_S, owed_s=5.0))
            await asyncio.sleep(0.3)
            first.release(held)
            batch_refused = await first.acquire(HOST, 0, patient=True) is None
            got = await asyncio.wait_for(asking, 2.0)
            waited = time.monotonic() - started
            still_refused = await first.acquire(HOST, 0, patient=True) is None
            return batch_refused, got is not None, waited, still_refused

    batch_refused, got, waited, still_refused = asyncio.run(go())
    assert got and waited > 0.25, "the interactive request gave up after its usual wait"
    assert batch_refused and still_refused


def test_across_replicas_no_debt_for_a_slot_an_interactive_call_holds(
        redis_prefix: str) -> None:
    async def go() -> tuple[bool, float, int]:
        async with replica(redis_prefix) as a, replica(redis_prefix) as b:
            first, second = SharedSlots(a, [HOST], WAIT_S), SharedSlots(b, [HOST], WAIT_S)
            held = await first.acquire(HOST, 0)
            assert held is not None and not held.patient
            started = time.monotonic()
            got = await second.acquire(HOST, WAIT_S, owed_s=5.0)
            waited = time.monotonic() - started
            asking = await a.client.zcard(f"{redis_prefix}:slots:{{{HOST.name}}}:asking")
            return got is not None, waited, asking

    got, waited, asking = asyncio.run(go())
    assert not got and waited < 0.5
    assert asking == 0, "a request that gave up still held batch items back"
