"""A queued request's submits written down as the driver makes them (flows.run_steps and
proxy/providers/resume.py): each submit before it is sent, its reply before the flow's next
call; a submit an earlier run made is answered from the journal instead of being sent, on
the route that holds it; a call no run can resume is reported as `abandoned`, when the next
run starts or when the job's outcome is stored."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import imaging
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.journal import Answer, Call, Journal
from proxy.billing.store import Store
from proxy.catalog import Route
from proxy.domain import Geometry, Image, ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import flows
from proxy.providers.base import Adapter, Flow, Sleep, UpstreamCall, UpstreamReply, exchange
from proxy.providers.resume import Resume
from proxy.routing.health import Health
from proxy.routing.router import Router
from proxy.routing.slots import Slots
from tests.conftest import make_config, serve
from tests.fakes import scripted

TASKS = scripted.route("tasks", "0.04")
OTHER = scripted.route("other", "0.02")
PNG = base64.b64encode(imaging.encode(16, 16, "png", "r")).decode()


def request(n: int = 1, ticket: str = "imgjob_1") -> ImageRequest:
    return ImageRequest(kind="generate", model="m", prompt="a lighthouse", n=n,
                        geometry=Geometry("1:1", "1K", None, "default"), output_format="png",
                        response_format="b64_json", ticket=ticket)


def _ok(reply: UpstreamReply) -> Failure | None:
    return None if reply.status == 200 else Failure(Kind.UPSTREAM_BROKEN, "no")


def task_flow(asked: ImageRequest, route: Route) -> Flow:
    """Submit, then poll until the task is done."""
    submitted = yield UpstreamCall("POST", f"{route.provider.base_url}/tasks")
    assert submitted is not None
    if submitted.status != 200:
        raise UpstreamError(Failure(Kind.OVERLOADED, "busy"))
    task = submitted.json()["id"]
    while True:
        yield Sleep(0.001)
        polled = yield UpstreamCall("GET", f"{route.provider.base_url}/tasks/{task}",
                                    kind="poll")
        assert polled is not None
        if polled.json()["done"]:
            return ImageResult(images=(Image("image/png", PNG),), upstream_id=task)


def sync_flow(asked: ImageRequest, route: Route) -> Flow:
    return (yield from exchange(UpstreamCall("POST", f"{route.provider.base_url}/sync"), _ok,
                                lambda reply, asked: ImageResult((Image("image/png", PNG),)),
                                asked))


TASK = Adapter("scripted", task_flow, images_per_call=1)
SYNC = Adapter("scripted", sync_flow)


class Host(httpx.AsyncBaseTransport):
    """Tasks done on their `polls`-th poll (calls hang while `hang` is set); `events` is
    shared with a RecordingLog, so the order of writes and calls shows."""

    def __init__(self, events: list[str] | None = None, polls: int = 2) -> None:
        self.events = events if events is not None else []
        self.polls = polls
        self.submits = 0
        self.polled: Counter[str] = Counter()
        self.hang = asyncio.Event()
        self.reached = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.events.append(request.method)
        self.reached.set()
        if request.method == "POST":
            self.submits += 1
            if self.hang.is_set():
                await asyncio.sleep(60)
            return httpx.Response(200, json={"id": f"t{self.submits}"})
        task = request.url.path.rsplit("/", 1)[1]
        self.polled[task] += 1
        if self.hang.is_set():
            await asyncio.sleep(60)
        return httpx.Response(200, json={"done": self.polled[task] >= self.polls})


class RecordingLog:
    """A SubmitLog that writes nothing: it says what the driver asked of it, and answers
    submits from `replies`."""

    def __init__(self, events: list[str], replies: dict[int, UpstreamReply] | None = None):
        self.events = events
        self.replies = replies or {}

    async def sending(self, ordinal: int) -> UpstreamReply | None:
        self.events.append(f"sending {ordinal}")
        return self.replies.get(ordinal)

    async def answered(self, ordinal: int, reply: UpstreamReply) -> None:
        self.events.append(f"answered {ordinal}: {reply.json()['id']}")

    async def failed(self) -> None:
        self.events.append("failed")


def drive(adapter: Adapter, host: Host, log: Any) -> ImageResult:
    async def go() -> ImageResult:
        async with httpx.AsyncClient(transport=host) as client:
            deadline = asyncio.get_running_loop().time() + 5
            return await flows.drive(adapter.flow(request(), TASKS), TASKS, client, deadline,
                                     log=log)
    return asyncio.run(go())


def test_a_submit_is_written_down_before_it_is_sent_and_its_reply_before_the_first_poll(
        ) -> None:
    events: list[str] = []
    drive(TASK, Host(events), RecordingLog(events))
    assert events == ["sending 0", "POST", "answered 0: t1", "GET", "GET"]


def test_a_submit_an_earlier_run_made_is_answered_from_the_log_and_not_sent() -> None:
    events: list[str] = []
    host = Host(events)
    earlier = UpstreamReply(200, httpx.Headers(), b'{"id": "t-earlier"}')
    result = drive(TASK, host, RecordingLog(events, {0: earlier}))
    assert host.submits == 0 and host.polled == {"t-earlier": 2}
    assert events == ["sending 0", "GET", "GET"] and result.upstream_id == "t-earlier"


def test_a_synchronous_call_keeps_no_reply() -> None:
    events: list[str] = []
    drive(SYNC, Host(events), RecordingLog(events))
    assert events == ["sending 0", "POST"]


def test_a_failed_flow_says_so_and_a_cancelled_one_does_not() -> None:
    events: list[str] = []
    busy = UpstreamReply(503, httpx.Headers(), b"{}")
    with pytest.raises(UpstreamError):
        drive(TASK, Host(events), RecordingLog(events, {0: busy}))
    assert events == ["sending 0", "failed"]

    async def cancelled() -> None:
        host = Host(events)
        host.hang.set()
        async with httpx.AsyncClient(transport=host) as client:
            deadline = asyncio.get_running_loop().time() + 5
            running = asyncio.ensure_future(flows.drive(
                TASK.flow(request(), TASKS), TASKS, client, deadline, log=RecordingLog(events)))
            await host.reached.wait()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    events.clear()
    asyncio.run(cancelled())
    assert events == ["sending 0", "POST"]


# --- Resume on a real store: one run cut off, the next one picks up -----------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "switchyard.db") as opened:
        yield opened


def resume(store: Store, journal: Journal | None = None) -> Resume:
    return Resume(journal or store.journal, store.deferred, "imgjob_1")


async def opened(submits: Resume, *routes: Route) -> list[Call]:
    return await submits.open([route.id for route in routes], "key_1", "acme")


def finish(store: Store, submits: Resume) -> list[Call]:
    """The job's outcome stored, with what the run accounted for."""
    return store.jobs.finish("imgjob_1", 200, b"{}", submits.accounted())


async def generate(adapter: Adapter, route: Route, host: Host, submits: Resume,
                   n: int = 1) -> ImageResult:
    async with httpx.AsyncClient(transport=host) as client:
        deadline = asyncio.get_running_loop().time() + 5
        return await flows.generate(adapter, route, request(n), client, deadline,
                                    submits=submits)


async def cut_off(adapter: Adapter, route: Route, host: Host, submits: Resume, calls: int,
                  n: int = 1) -> None:
    """A run that dies once the host has seen `calls` calls (as a killed process would)."""
    running = asyncio.ensure_future(generate(adapter, route, host, submits, n))
    while len(host.events) < calls:
        await asyncio.sleep(0.001)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


def abandoned_rows(store: Store) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.db.query(
        "SELECT provider, route, billed_micros, upstream_micros, n_asked FROM ledger "
        "WHERE outcome = 'abandoned' ORDER BY route")]


def test_a_run_cut_off_mid_poll_is_resumed_by_the_next_without_a_submit(store: Store) -> None:
    host = Host(polls=3)
    second = resume(store)

    async def two_runs() -> ImageResult:
        first = resume(store)
        assert await opened(first, TASKS) == []
        await cut_off(TASK, TASKS, host, first, calls=2)  # the submit and a first poll
        assert await opened(second, TASKS, OTHER) == []
        assert second.resumed == {TASKS.id}
        return await generate(TASK, TASKS, host, second)

    result = asyncio.run(two_runs())
    assert host.submits == 1 and host.polled == {"t1": 3} and result.upstream_id == "t1"
    assert store.journal.count() == 1  # until the job's outcome is stored
    assert finish(store, second) == []
    assert store.journal.count() == 0 and abandoned_rows(store) == []


def test_a_run_cut_off_after_its_flow_delivered_resumes_rather_than_pays_again(
        store: Store) -> None:
    """The flow delivered, then the process died before the job's outcome was stored: the
    task's result is fetched again, not paid for again."""
    host = Host(polls=1)

    async def two_runs() -> ImageResult:
        first = resume(store)
        await opened(first, TASKS)
        await generate(TASK, TASKS, host, first)  # ... and the process dies here
        second = resume(store)
        await opened(second, TASKS)
        return await generate(TASK, TASKS, host, second)

    assert asyncio.run(two_runs()).upstream_id == "t1"
    assert host.submits == 1 and host.polled == {"t1": 2}


def test_each_part_of_a_fanned_out_request_is_resumed(store: Store) -> None:
    host = Host(polls=2)

    async def two_runs() -> ImageResult:
        await cut_off(TASK, TASKS, host, resume(store), calls=4, n=2)  # 2 submits, 2 polls
        second = resume(store)
        await opened(second, TASKS)
        return await generate(TASK, TASKS, host, second, n=2)

    result = asyncio.run(two_runs())
    assert host.submits == 2 and len(result.images) == 2
    assert sorted(host.polled) == ["t1", "t2"] and store.journal.count() == 2


def test_a_call_cut_off_before_its_reply_is_reported_as_abandoned(store: Store) -> None:
    host = Host()
    host.hang.set()

    async def two_runs() -> list[Call]:
        await cut_off(SYNC, TASKS, host, resume(store), calls=1)
        return await opened(resume(store), TASKS)

    (call,) = asyncio.run(two_runs())
    assert (call.provider, call.route, call.upstream_micros) == ("tasks", TASKS.id, 40_000)
    assert abandoned_rows(store) == [("tasks", TASKS.id, 0, 40_000, 1)]
    assert store.journal.count() == 0


def test_a_task_the_next_run_never_went_back_to_is_abandoned_with_the_jobs_outcome(
        store: Store) -> None:
    host = Host()
    second = resume(store)

    async def two_runs() -> None:
        await cut_off(TASK, TASKS, host, resume(store), calls=2)
        await opened(second, TASKS, OTHER)
        await generate(SYNC, OTHER, host, second)  # the run went elsewhere

    asyncio.run(two_runs())
    (call,) = finish(store, second)
    assert call.route == TASKS.id and abandoned_rows(store) == [("tasks", TASKS.id, 0,
                                                                 40_000, 1)]
    assert store.journal.count() == 0


class Away(Journal):
    """A journal whose database is away for the calls named."""

    def __init__(self, store: Store, *away: str) -> None:
        super().__init__(store.db)
        self.away = away

    def begin(self, call: Call) -> None:
        self._maybe("begin")
        super().begin(call)

    def answer(self, call_id: str, answer: Answer) -> None:
        self._maybe("answer")
        super().answer(call_id, answer)

    def drop(self, call_ids: Any) -> None:
        self._maybe("drop")
        super().drop(call_ids)

    def _maybe(self, name: str) -> None:
        if name in self.away:
            raise DatabaseUnavailable("away")


def test_the_database_away_before_a_submit_sends_nothing(store: Store) -> None:
    host = Host()
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(generate(TASK, TASKS, host, resume(store, Away(store, "begin"))))
    assert host.submits == 0


def test_the_database_away_while_a_reply_is_kept_does_not_stop_the_flow(store: Store) -> None:
    host = Host()
    submits = resume(store, Away(store, "answer"))
    assert asyncio.run(generate(TASK, TASKS, host, submits)).upstream_id == "t1"
    assert host.submits == 1 and finish(store, submits) == [] and store.journal.count() == 0


def test_a_failed_flows_calls_go_at_once_or_with_the_jobs_outcome(store: Store) -> None:
    busy = Host(polls=10**6)  # never done: the deadline ends the flow

    async def failing(submits: Resume) -> None:
        async with httpx.AsyncClient(transport=busy) as client:
            deadline = asyncio.get_running_loop().time() + 0.05
            with pytest.raises(UpstreamError):
                await flows.generate(TASK, TASKS, request(), client, deadline, submits=submits)

    first = resume(store)
    asyncio.run(failing(first))
    assert store.journal.count() == 0 and first.accounted() == frozenset()
    away = resume(store, Away(store, "drop"))
    asyncio.run(failing(away))
    assert store.journal.count() == 1
    assert finish(store, away) == [] and store.journal.count() == 0
    assert abandoned_rows(store) == []


def test_routes_holding_the_requests_upstream_tasks_are_tried_first() -> None:
    router = Router({"scripted": TASK}, {}, 10, health=Health((TASKS, OTHER)),
                    slots=Slots((TASKS.provider, OTHER.provider)))
    model = scripted.model((TASKS, OTHER))
    assert [r.id for r in router.prepare(model, request()).routes] == [OTHER.id, TASKS.id]
    assert [r.id for r in router.prepare(model, request(), first={TASKS.id}).routes] == \
        [TASKS.id, OTHER.id]


def test_only_queued_work_writes_the_journal(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An interactive request pays no journal write; a job's rows go with its outcome."""
    written: list[str] = []
    begin = Journal.begin

    def counted(journal: Journal, call: Call) -> None:
        written.append(call.ticket)
        begin(journal, call)

    monkeypatch.setattr(Journal, "begin", counted)
    with serve(make_config(tmp_path / "data")) as running, \
            httpx.Client(base_url=running.v1, timeout=10) as client:
        auth = {"authorization": f"Bearer {running.new_key()}"}
        body = {"model": "test-image", "prompt": "a lighthouse"}
        assert client.post("/images/generations", headers=auth, json=body).status_code == 200
        assert written == []
        job = client.post("/images/generations", json=body,
                          headers={**auth, "Prefer": "respond-async"}).json()["id"]
        deadline = time.monotonic() + 10
        while client.get(f"/images/jobs/{job}", headers=auth).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with running.store() as store:
            assert written == [job] and store.journal.count() == 0
