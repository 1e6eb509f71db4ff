"""Batch items bound for the Gemini Batch API share upstream batches (proxy/providers/grouping.py):
one create and one poll loop for many items, each answered by its own key, a member's failure
its own, a failed submit everyone's, and a member re-claimed after a crash waits for the batch
it is already in instead of being sent again (found by its label upstream when its server died
before it learnt the batch's name)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Kind, UpstreamError
from proxy.providers import flows
from proxy.providers.gemini_batch import ADAPTER
from proxy.providers.grouping import SENDING, Groups
from proxy.routing.health import Health, State
from tests.fakes.gemini_batch import GEMINI_BASE, WALK, FakeGeminiBatch
from tests.protocol_kit import decoded, make_request
from tests.test_gemini_batch import make_route


class Remembered:
    """The jobs table's part in grouping: which batch each ticket went up in."""

    def __init__(self) -> None:
        self.refs: dict[str, str] = {}
        self.calls = 0

    def remember(self, tickets: list[str], name: str) -> None:
        self.calls += 1
        self.refs.update(dict.fromkeys(tickets, name))

    def recall(self, ticket: str) -> str | None:
        return self.refs.get(ticket)

    def forget(self, ticket: str, name: str) -> None:
        if self.refs.get(ticket) == name:
            del self.refs[ticket]


def deferred(options: dict[str, Any] | None = None) -> Route:
    route = make_route({"gather_s": 0.05, **(options or {})})
    return replace(route, provider=replace(route.provider, deferred=True))


def items(count: int) -> list[ImageRequest]:
    return [replace(make_request(seed=i), ticket=f"imgjob_{i:03d}", patience_s=3600.0)
            for i in range(count)]


async def send_all(fake: FakeGeminiBatch, requests: list[ImageRequest], route: Route,
                   groups: Groups) -> list[ImageResult | BaseException]:
    deadline = asyncio.get_running_loop().time() + 30
    async with httpx.AsyncClient(transport=fake) as client:
        return await asyncio.gather(*(
            flows.generate(ADAPTER, route, request, client, deadline, groups=groups)
            for request in requests), return_exceptions=True)


def gets(fake: FakeGeminiBatch) -> int:
    return sum(1 for seen in fake.seen if seen.method == "GET")


def test_many_items_go_up_as_one_batch_each_answered_by_its_own_key() -> None:
    fake, refs = FakeGeminiBatch(), Remembered()
    results = asyncio.run(send_all(fake, items(12), deferred(), Groups(flows.run_steps, refs)))
    assert fake.creates == 1
    (batch,) = fake.batches.values()
    keys = [r["metadata"]["key"] for r in batch.requests]
    assert keys == [f"imgjob_{i:03d}" for i in range(12)]
    assert gets(fake) == 2, "one poll loop (RUNNING, SUCCEEDED) served all twelve"
    assert all(isinstance(r, ImageResult) for r in results)
    sent = [orjson_prompt(r) for r in batch.requests]
    assert sent == [make_request(seed=i).prompt for i in range(12)]
    assert all(decoded(r.images[0]).format == "PNG" for r in results
               if isinstance(r, ImageResult))
    assert refs.refs == {f"imgjob_{i:03d}": batch.name for i in range(12)}


def orjson_prompt(entry: dict[str, Any]) -> str:
    return str(entry["request"]["contents"][0]["parts"][0]["text"])


def test_a_full_group_is_sent_and_the_next_item_starts_another() -> None:
    fake = FakeGeminiBatch()
    small = replace(ADAPTER, grouping=replace(ADAPTER.grouping, max_members=5))
    deadline_items = items(12)

    async def go() -> list[Any]:
        deadline = asyncio.get_running_loop().time() + 30
        groups = Groups(flows.run_steps)
        async with httpx.AsyncClient(transport=fake) as client:
            return await asyncio.gather(*(
                flows.generate(small, deferred(), r, client, deadline, groups=groups)
                for r in deadline_items))

    results = asyncio.run(go())
    assert fake.creates == 3 and len(results) == 12
    assert sorted(len(b.requests) for b in fake.batches.values()) == [2, 5, 5]


def test_one_members_safety_block_is_its_own_and_the_rest_are_served() -> None:
    fake = FakeGeminiBatch()
    fake.inner.then("image_safety")  # the first inline request answered is blocked
    results = asyncio.run(send_all(fake, items(4), deferred(), Groups(flows.run_steps)))
    failed = [r for r in results if isinstance(r, UpstreamError)]
    assert len(failed) == 1 and failed[0].failure.kind is Kind.CONTENT_BLOCKED
    assert results[0] is failed[0], "the member whose key was blocked, not another"
    assert sum(isinstance(r, ImageResult) for r in results) == 3


def test_a_refused_submit_fails_every_member_with_its_reason() -> None:
    fake = FakeGeminiBatch().fail_create("rate_limited")
    results = asyncio.run(send_all(fake, items(3), deferred(), Groups(flows.run_steps)))
    assert fake.creates == 1
    assert all(isinstance(r, UpstreamError) and r.failure.kind is Kind.RATE_LIMITED
               for r in results)


def test_a_failed_create_is_one_failure_of_the_route_however_many_members_hear_it() -> None:
    # Issue 22.3: eight members of one failed create open no breaker (one failure, not eight).
    fake = FakeGeminiBatch().fail_create("unavailable")
    route = deferred()
    results = asyncio.run(send_all(fake, items(8), route, Groups(flows.run_steps)))
    assert fake.creates == 1
    failures = [r.failure for r in results if isinstance(r, UpstreamError)]
    assert len(failures) == 8 and len({f.shared for f in failures}) == 1
    assert failures[0].shared is not None
    health = Health([route])
    for failure in failures:
        health.of(route).end(health.of(route).begin(), "1K", failure)
    assert health.of(route).state is State.CLOSED


def crash(fake: FakeGeminiBatch, refs: Remembered, when: Callable[[], bool]) -> None:
    """A server gathering three items that dies (its tasks cancelled) once `when()` holds;
    the batch is still running upstream."""
    fake.hold = True

    async def run() -> None:
        groups = Groups(flows.run_steps, refs)
        deadline = asyncio.get_running_loop().time() + 30
        async with httpx.AsyncClient(transport=fake) as client:
            running = [asyncio.create_task(flows.generate(
                ADAPTER, deferred(), r, client, deadline, groups=groups)) for r in items(3)]
            while not when():
                await asyncio.sleep(0.01)
            for task in running:
                task.cancel()
            await groups.aclose()

    asyncio.run(run())
    fake.hold = False


def test_a_member_reclaimed_after_a_crash_waits_for_its_batch_without_a_second_create() -> None:
    fake, refs = FakeGeminiBatch(), Remembered()
    crash(fake, refs, lambda: len(refs.refs) == 3 and not any(
        n.startswith(SENDING) for n in refs.refs.values()))
    results = asyncio.run(send_all(fake, items(3), deferred(), Groups(flows.run_steps, refs)))
    assert fake.creates == 1, "the restarted server sent nothing new"
    assert all(isinstance(r, ImageResult) for r in results)
    assert {str(s.url) for s in fake.seen if s.method == "GET"} == {
        f"{GEMINI_BASE}/{name}" for name in set(refs.refs.values())}


class Forgetful(Remembered):
    """A server killed after Google accepted the create, before it wrote the batch's name:
    only the label written before the create is left."""

    def remember(self, tickets: list[str], name: str) -> None:
        if name.startswith(SENDING):
            super().remember(tickets, name)


def test_members_whose_server_died_before_remembering_the_batch_find_it_by_its_label() -> None:
    fake, refs = FakeGeminiBatch(), Forgetful()
    crash(fake, refs, lambda: fake.creates == 1)
    batch = fake.only
    assert set(refs.refs.values()) == {SENDING + batch.display_name}
    after = Remembered()
    after.refs = dict(refs.refs)
    results = asyncio.run(send_all(fake, items(3), deferred(), Groups(flows.run_steps, after)))
    assert fake.creates == 1, "found by its label upstream, not sent again"
    assert all(isinstance(r, ImageResult) for r in results)
    assert after.refs == {f"imgjob_{i:03d}": batch.name for i in range(3)}, "names remembered"


def test_a_label_the_upstream_never_got_sends_the_members_in_a_new_batch() -> None:
    fake, refs = FakeGeminiBatch(), Remembered()
    refs.refs = {f"imgjob_{i:03d}": SENDING + "switchyard-group-lost" for i in range(3)}
    results = asyncio.run(send_all(fake, items(3), deferred(), Groups(flows.run_steps, refs)))
    assert fake.creates == 1
    assert all(isinstance(r, ImageResult) for r in results)
    assert set(refs.refs.values()) == {fake.only.name}


def test_without_a_pool_the_adapter_still_sends_one_batch_per_request() -> None:
    fake = FakeGeminiBatch()

    async def go() -> None:
        deadline = asyncio.get_running_loop().time() + 30
        async with httpx.AsyncClient(transport=fake) as client:
            await asyncio.gather(*(flows.generate(ADAPTER, deferred(), r, client, deadline)
                                   for r in items(2)))

    asyncio.run(go())
    assert fake.creates == 2


def test_a_member_stops_waiting_at_its_own_deadline() -> None:
    fake = FakeGeminiBatch()
    fake.hold = True

    async def go() -> UpstreamError:
        deadline = asyncio.get_running_loop().time() + 0.3
        async with httpx.AsyncClient(transport=fake) as client:
            with pytest.raises(UpstreamError) as caught:
                await flows.generate(ADAPTER, deferred(), items(1)[0], client, deadline,
                                     groups=Groups(flows.run_steps))
        return caught.value

    assert asyncio.run(go()).failure.kind is Kind.TIMEOUT


def test_a_retry_of_a_member_whose_batch_failed_goes_up_in_a_new_batch() -> None:
    """A shared batch that failed (RESOURCE_EXHAUSTED: Google's quota of enqueued batch
    tokens, which the job worker retries) leaves its members in no batch: their retry joins a
    new one (before: each retry polled the dead batch again and failed the same way)."""
    quota = {"code": 8, "message": "You exceeded your current quota of enqueued batch tokens."}
    fake, refs = FakeGeminiBatch(states=("PENDING", "FAILED"), failed_error=quota), Remembered()
    (first,) = asyncio.run(send_all(fake, items(1), deferred(), Groups(flows.run_steps, refs)))
    assert isinstance(first, UpstreamError) and refs.refs == {}
    fake.states = WALK  # the quota has room again
    (again,) = asyncio.run(send_all(fake, items(1), deferred(), Groups(flows.run_steps, refs)))
    assert isinstance(again, ImageResult), again
    assert fake.creates == 2
