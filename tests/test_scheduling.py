"""How batch items are scheduled: deferred routes only for patient requests, patient requests
spread over free routes and wait for a slot instead of failing, tenants' own limits and
budgets respected, and every host kept at (never past) its cap."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from proxy.api import job_worker
from proxy.bench.batch import run_batch
from proxy.bench.batch_hosts import HostSpec
from proxy.billing.keys import KeyLimits
from proxy.domain import Policy
from proxy.routing.health import Health, Settings
from proxy.routing.planning import NoRoute, plan
from proxy.routing.router import RoutesFailed
from proxy.routing.slots import Slots
from tests.conftest import make_config, serve
from tests.fakes import scripted
from tests.fakes.scripted import Scripted, Step
from tests.test_batches import ENDPOINT, finished, jsonl, lines_of
from tests.test_router import make_router, request

CHEAP = scripted.route("cheap", "0.02", latency=0.1, max_in_flight=1)
DEAR = scripted.route("dear", "0.08", latency=0.1, max_in_flight=1)
BATCH_API = replace(scripted.route("batch-api", "0.01", latency=600, max_in_flight=100),
                    provider=replace(scripted.route("batch-api", "0.01").provider,
                                     deferred=True, max_in_flight=100))


def planned(req_patience: float | None) -> list[str]:
    routes = (CHEAP, DEAR, BATCH_API)
    req = replace(request(), patience_s=req_patience)
    ranked = plan(scripted.model(routes), req, Policy(), Health(routes, Settings()))
    return [r.provider.name for r in ranked.routes]


FLEX = replace(scripted.route("flex", "0.01", latency=180),
               provider=replace(scripted.route("flex", "0.01").provider, lane="discount"))


def laned(patience: float | None, lane: str | None = None) -> list[str]:
    routes = (CHEAP, DEAR, BATCH_API, FLEX)
    req = replace(request(), patience_s=patience)
    ranked = plan(scripted.model(routes), req, Policy(lane=lane), Health(routes, Settings()))
    return [r.provider.name for r in ranked.routes]


def test_a_discount_lane_serves_who_can_wait_or_asks_for_it() -> None:
    # Issue 22.3: Gemini's Flex lane (minutes, half price) is never an interactive request's
    # route unasked; a batch item takes it when its window covers it; `route.lane` chooses.
    assert laned(None) == ["cheap", "dear"]
    assert laned(1000.0) == ["flex", "cheap", "dear"]  # too short for the batch API
    assert laned(24 * 3600.0) == ["flex", "batch-api", "cheap", "dear"]  # same price: sooner
    assert laned(None, "discount") == ["flex"]  # waits for the discount, never full price
    assert laned(24 * 3600.0, "discount") == ["flex", "batch-api"]
    assert laned(24 * 3600.0, "standard") == ["cheap", "dear"]
    with pytest.raises(NoRoute) as caught:
        plan(scripted.model((CHEAP, DEAR)), request(), Policy(lane="discount"),
             Health((CHEAP, DEAR), Settings()))
    assert caught.value.param == "route.lane"
    # Only a discount lane serves the model: an interactive request is told how to wait.
    with pytest.raises(NoRoute) as caught:
        plan(scripted.model((FLEX,)), request(), Policy(), Health((FLEX,), Settings()))
    assert caught.value.param == "route.lane" and "'discount'" in caught.value.message


def test_a_deferred_route_is_only_for_requests_that_can_wait() -> None:
    assert planned(None) == ["cheap", "dear"], "interactive: never the batch API"
    assert planned(60.0) == ["cheap", "dear"], "a window shorter than its turnaround"
    assert planned(24 * 3600.0) == ["batch-api", "cheap", "dear"], "cheapest picks it"


def test_a_patient_request_skips_a_full_route_at_once() -> None:
    """An interactive request would wait up to 10 s for cheap's slot (free after 0.5 s) and
    take it; a patient one goes to the free route while cheap is still busy."""
    async def go() -> tuple[str, str, bool]:
        upstream = Scripted()
        upstream.script("cheap", Step(delay_s=0.5))
        router = make_router(upstream, (CHEAP, DEAR), slot_wait_s=10)
        model = scripted.model((CHEAP, DEAR))
        holder = asyncio.create_task(router.serve(model, request()))
        await asyncio.sleep(0.05)  # cheap's only slot is now taken
        patient = await router.serve(model, replace(request(), patience_s=3600.0))
        busy = not holder.done()
        await holder
        upstream.script("cheap", Step(delay_s=0.5))
        holder = asyncio.create_task(router.serve(model, request()))
        await asyncio.sleep(0.05)
        interactive = await router.serve(model, request())
        await holder
        return patient.provider, interactive.provider, busy

    patient, interactive, cheap_was_busy = asyncio.run(go())
    assert (patient, interactive) == ("dear", "cheap")
    assert cheap_was_busy, "the patient request did not wait for cheap's slot"


def test_a_patient_request_waits_for_a_slot_where_an_interactive_one_is_refused() -> None:
    async def go() -> tuple[str, RoutesFailed]:
        upstream = Scripted()
        upstream.script("cheap", Step(delay_s=0.4))
        upstream.script("dear", Step(delay_s=0.4))
        router = make_router(upstream, (CHEAP, DEAR), slot_wait_s=0.01)
        model = scripted.model((CHEAP, DEAR))
        holders = [asyncio.create_task(router.serve(model, request(policy=Policy(only=
                   frozenset({name}))))) for name in ("cheap", "dear")]
        await asyncio.sleep(0.05)
        with pytest.raises(RoutesFailed) as refused:
            await router.serve(model, request())
        served = await router.serve(model, replace(request(), patience_s=3600.0))
        await asyncio.gather(*holders)
        return served.provider, refused.value

    provider, refused = asyncio.run(go())
    assert refused.failure.kind.value == "overloaded" and not refused.attempts
    assert provider in ("cheap", "dear")


def test_a_patient_request_is_held_to_the_request_timeout_on_an_interactive_route() -> None:
    async def go() -> RoutesFailed:
        upstream = Scripted()
        upstream.script("cheap", Step(delay_s=5.0))
        router = make_router(upstream, (CHEAP,), timeout_s=0.2)
        with pytest.raises(RoutesFailed) as caught:
            await router.serve(scripted.model((CHEAP,)), replace(request(), patience_s=3600.0))
        return caught.value

    failed = asyncio.run(go())
    assert failed.failure.kind.value == "timeout", "not given the batch window (3600 s)"


def test_a_released_slot_wakes_one_waiter() -> None:
    async def go() -> list[bool]:
        slots = Slots([CHEAP.provider])
        held = await slots.acquire(CHEAP.provider, 0)
        assert held is not None
        waiters = [asyncio.create_task(slots.released([CHEAP.provider], 1.0))
                   for _ in range(3)]
        await asyncio.sleep(0.01)
        slots.release(held)
        await asyncio.sleep(0.01)
        woken = [w.done() for w in waiters]
        for waiter in waiters:
            waiter.cancel()
        return woken

    assert sorted(asyncio.run(go())) == [False, False, True]


MARKET = (HostSpec("a", 2, 2.0, Decimal("0.03")), HostSpec("b", 3, 4.0, Decimal("0.04")),
          HostSpec("c", 4, 1.0, Decimal("0.06")))


def test_a_batch_fills_every_host_to_its_cap_and_never_past_it() -> None:
    outcome = asyncio.run(run_batch(MARKET, 90, time_scale=0.05, seed=3, progress=False))
    assert outcome.succeeded == 90
    assert sum(h.served for h in outcome.hosts) == 90, "each item generated once"
    assert [h.peak for h in outcome.hosts] == [2, 3, 4], "every host used to its cap, not past"


def test_a_tenant_concurrency_limit_holds_back_its_batch() -> None:
    outcome = asyncio.run(run_batch(MARKET, 30, time_scale=0.05, seed=4, progress=False,
                                    limits=KeyLimits(concurrency=2)))
    assert outcome.succeeded == 30
    assert max(h.peak for h in outcome.hosts) <= 2 and outcome.hosts[0].peak == 2


def test_a_batch_never_spends_beyond_the_budget(tmp_path: Path) -> None:
    """test-image costs $0.02 at sim-cheap: a $0.10 budget admits exactly five items."""
    config = make_config(tmp_path / "data")
    with serve(config) as running, openai.OpenAI(
            base_url=running.v1, max_retries=0,
            api_key=running.new_key("capped", KeyLimits(budget_usd=Decimal("0.10")))) as sdk:
        upload = sdk.files.create(file=("in.jsonl", jsonl(
            [{"model": "test-image", "prompt": f"p{i}"} for i in range(12)])), purpose="batch")
        batch = finished(sdk, sdk.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h").id)
        errors = lines_of(sdk, batch.error_file_id)
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 7)
        assert {e["response"]["body"]["error"]["code"] for e in errors} == {"insufficient_quota"}
        with running.store() as store:
            spent, reserved = store.money.spent(
                store.db.query("SELECT id FROM api_keys WHERE name = 'capped'")[0][0], "total")
        assert (spent, reserved) == (Decimal("0.10"), Decimal(0))


def test_items_that_cannot_get_a_slot_wait_in_the_queue_not_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As if a deferred host's cap counted (10,000 items) for a model it does not serve: the
    worker stops claiming once MAX_WAITING items wait for the test hosts' 32 slots."""
    monkeypatch.setattr(job_worker, "capacity", lambda svc: 10_000)
    config = make_config(tmp_path / "data", simulation_time_scale=0.2)
    with serve(config) as running, openai.OpenAI(base_url=running.v1, max_retries=0,
                                                 api_key=running.new_key("bulk")) as sdk:
        upload = sdk.files.create(file=("in.jsonl", jsonl(
            [{"model": "test-image", "prompt": f"p{i}"} for i in range(400)])), purpose="batch")
        batch = sdk.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                   completion_window="24h")
        peak = 0
        with running.store() as store:
            while sdk.batches.retrieve(batch.id).status != "completed":
                peak = max(peak, int(store.db.query(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'processing'")[0][0]))
                time.sleep(0.02)
    slots = 16 + 16  # sim-cheap and sim-fast
    assert slots <= peak <= slots + job_worker.CLAIM_AT_ONCE + job_worker.MAX_WAITING


def test_each_server_process_takes_its_share_of_a_hosts_cap() -> None:
    """serve --workers 3: a host capped at 10 gets at most 3 + 3 + 3 from the processes."""
    wide = replace(CHEAP.provider, name="wide", max_in_flight=10)

    async def go() -> list[bool]:
        slots = Slots([wide, CHEAP.provider], processes=3)
        assert slots.capacity == 3 + 1, "a cap below the process count still gets one"
        return [await slots.acquire(wide, 0) is not None for _ in range(4)]

    assert asyncio.run(go()) == [True, True, True, False]
