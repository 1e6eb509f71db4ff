"""Traces (proxy/tracing) through the OpenTelemetry SDK's in-memory exporter: each request a
span tree (server -> routing -> attempts -> upstream calls, and the ledger write), a client's
traceparent continued and one sent upstream, failovers and hedges visible, queued work in the
trace of the request that queued it, and no secret in any span. Without an endpoint nothing of
OpenTelemetry is imported at all."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy import tracing
from proxy.app import load_catalog
from proxy.billing.store import Store
from proxy.domain import Policy
from proxy.providers.simulated import SimulatedUpstream
from proxy.tracing.otel import Tracer
from tests.conftest import Running, make_config, serve
from tests.fakes import scripted
from tests.fakes.scripted import Scripted, Step
from tests.test_jobs import wait_for
from tests.test_router import CHEAP, MID, make_router, request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PROMPT = "a lighthouse drawn for case " + secrets.token_hex(6)


@dataclass
class Seen(httpx.AsyncBaseTransport):
    """A simulated host that keeps the traceparent of each call it gets."""

    inner: httpx.AsyncBaseTransport
    traceparents: list[str | None] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.traceparents.append(request.headers.get("traceparent"))
        return await self.inner.handle_async_request(request)


@dataclass
class Traced:
    running: Running
    exporter: InMemorySpanExporter
    hosts: dict[str, Seen]

    def trace(self, trace_id: int, last: str, within_s: float = 5.0) -> list[ReadableSpan]:
        """The trace's spans once one named `last` has ended."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            spans = [s for s in self.exporter.get_finished_spans()
                     if s.context.trace_id == trace_id]
            if any(s.name == last for s in spans):
                return spans
            time.sleep(0.02)
        raise AssertionError(f"no span {last!r} in trace {trace_id:032x}: "
                             f"{[s.name for s in self.exporter.get_finished_spans()]}")


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    config = make_config(tmp_path / "data")
    providers = {p.name: p for p in load_catalog(config).providers}
    hosts = {name: Seen(SimulatedUpstream(providers[name], 0.0))
             for name in ("sim-cheap", "sim-broken")}
    exporter = InMemorySpanExporter()
    with serve(config, transports=hosts, tracer=Tracer(exporter)) as running:
        yield Traced(running, exporter, hosts)


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.parent and s.parent.span_id == parent.context.span_id),
                  key=lambda s: s.start_time or 0)


def sdk(traced: Traced, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=traced.running.v1, api_key=key or traced.running.new_key(),
                         max_retries=0)


def test_a_request_is_a_trace_that_continues_the_clients(traced: Traced) -> None:
    with sdk(traced) as client:
        raw = client.images.with_raw_response.generate(
            model="test-image", prompt=PROMPT, extra_headers={"traceparent": TRACEPARENT})
    spans = traced.trace(int(TRACE_ID, 16), "POST /v1/images/generations")
    server = one(spans, "POST /v1/images/generations")
    assert server.kind is SpanKind.SERVER and server.parent is not None
    assert server.parent.span_id == int(PARENT_ID, 16), "the client's span is its parent"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["switchyard.request_id"] == raw.headers["x-request-id"]
    routing, ledger = children(spans, server)
    assert routing.name == "route test-image" and ledger.name == "ledger write"
    assert routing.attributes is not None and ledger.attributes is not None
    assert routing.attributes["switchyard.plan"] == "test-image/sim-cheap, test-image/sim-fast"
    assert routing.attributes["switchyard.provider"] == "sim-cheap"
    assert routing.attributes["switchyard.attempt_log"] == "sim-cheap=ok"
    assert ledger.attributes["switchyard.outcome"] == "success"
    assert ledger.attributes["switchyard.billed_usd"] == pytest.approx(0.02)
    (attempt,) = children(spans, routing)
    assert attempt.name == "attempt sim-cheap" and attempt.attributes is not None
    assert {k: attempt.attributes[k] for k in ("switchyard.provider", "switchyard.route",
                                               "switchyard.tier", "switchyard.outcome",
                                               "switchyard.images")} == {
        "switchyard.provider": "sim-cheap", "switchyard.route": "test-image/sim-cheap",
        "switchyard.tier": "1K", "switchyard.outcome": "success", "switchyard.images": 1}
    assert attempt.attributes["switchyard.price_usd"] == pytest.approx(0.02)
    assert int(attempt.attributes["switchyard.bytes"]) > 1000  # type: ignore[arg-type]
    (submit,) = children(spans, attempt)
    assert submit.name == "submit sim-cheap" and submit.kind is SpanKind.CLIENT
    assert submit.attributes is not None
    assert submit.attributes["http.response.status_code"] == 200
    assert submit.attributes["server.address"] == "sim-cheap.simulated"
    # The host got a traceparent: this trace, the submit span its parent.
    assert traced.hosts["sim-cheap"].traceparents == [
        f"00-{TRACE_ID}-{submit.context.span_id:016x}-01"]


def test_a_failover_shows_both_attempts_and_the_failure_class(traced: Traced) -> None:
    with sdk(traced) as client:
        raw = client.images.with_raw_response.generate(model="test-failover", prompt=PROMPT)
    log = raw.headers["x-switchyard-attempt-log"]  # e.g. "sim-broken=overloaded, sim-cheap=ok"
    failure = log.split(",")[0].split("=")[1]
    server = next(s for s in traced.exporter.get_finished_spans()
                  if s.attributes and s.attributes.get("switchyard.request_id") ==
                  raw.headers["x-request-id"])
    spans = traced.trace(server.context.trace_id, server.name)
    routing = one(spans, "route test-failover")
    assert routing.attributes is not None and routing.attributes["switchyard.attempt_log"] == log
    broken, cheap = children(spans, routing)
    assert (broken.name, cheap.name) == ("attempt sim-broken", "attempt sim-cheap")
    assert broken.attributes is not None and cheap.attributes is not None
    assert broken.attributes["switchyard.outcome"] == failure
    assert broken.attributes["switchyard.failure"] == failure
    assert broken.status.status_code.name == "ERROR"
    assert cheap.attributes["switchyard.outcome"] == "success"
    (submit,) = children(spans, broken)
    assert submit.attributes is not None
    assert submit.attributes["http.response.status_code"] in (429, 500, 503)


def test_a_hedge_shows_the_loser() -> None:
    exporter = InMemorySpanExporter()
    tracer = Tracer(exporter)
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=3.0))  # past its p97: mid is started beside it
    router = make_router(upstream)

    async def go() -> None:
        tracing.ACTIVE.set(tracer)
        await router.serve(scripted.model((CHEAP, MID), "fastest"),
                           request(policy=Policy(hedge=True)))
        await asyncio.sleep(0.05)  # the cancelled attempt ends on the loop's next turns

    asyncio.run(go())
    spans = exporter.get_finished_spans()
    routing = one(spans, "route m")
    assert routing.attributes is not None
    assert routing.attributes["switchyard.attempt_log"] == "mid=ok, cheap=hedged"
    attempts = {s.name: s for s in children(spans, routing)}
    assert set(attempts) == {"attempt cheap", "attempt mid"}
    assert attempts["attempt cheap"].attributes is not None
    assert attempts["attempt cheap"].attributes["switchyard.outcome"] == "cancelled"
    assert attempts["attempt mid"].attributes is not None
    assert attempts["attempt mid"].attributes["switchyard.outcome"] == "success"


def test_an_async_job_continues_the_trace_of_the_request_that_queued_it(
        traced: Traced) -> None:
    key = traced.running.new_key()
    accepted = httpx.post(f"{traced.running.v1}/images/generations", json={
        "model": "test-image", "prompt": PROMPT}, headers={
        "authorization": f"Bearer {key}", "prefer": "respond-async",
        "traceparent": TRACEPARENT})
    assert accepted.status_code == 202
    assert wait_for(traced.running, key, accepted.json()["id"])["status"] == "succeeded"
    spans = traced.trace(int(TRACE_ID, 16), "job")
    server, job = one(spans, "POST /v1/images/generations"), one(spans, "job")
    assert job.kind is SpanKind.CONSUMER and job.parent is not None
    assert job.parent.span_id == server.context.span_id
    assert job.attributes is not None
    assert job.attributes["switchyard.job_id"] == accepted.json()["id"]
    routing = one(spans, "route test-image")
    assert routing.parent is not None and routing.parent.span_id == job.context.span_id
    assert [s.name for s in children(spans, routing)] == ["attempt sim-cheap"]
    ledger = one(spans, "ledger write")
    assert ledger.parent is not None and ledger.parent.span_id == job.context.span_id


def test_batch_items_continue_the_trace_of_the_request_that_made_the_batch(
        traced: Traced) -> None:
    from tests.test_batches import finished, jsonl

    content = jsonl([{"model": "test-image", "prompt": f"p{i}"} for i in range(2)])
    with sdk(traced) as client:
        uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations",
                                      completion_window="24h",
                                      extra_headers={"traceparent": TRACEPARENT})
        assert finished(client, batch.id).status == "completed"
    spans = traced.trace(int(TRACE_ID, 16), "batch item")
    server = one(spans, "POST /v1/batches")
    deadline = time.monotonic() + 5
    while len(items := [s for s in spans if s.name == "batch item"]) < 2:
        assert time.monotonic() < deadline, "both items' spans"
        time.sleep(0.05)
        spans = traced.trace(int(TRACE_ID, 16), "batch item")
    assert all(item.parent and item.parent.span_id == server.context.span_id
               for item in items)
    assert {item.attributes["switchyard.batch_id"] for item in items  # type: ignore[index]
            } == {batch.id}


def test_no_secret_is_in_any_span(traced: Traced) -> None:
    key = traced.running.new_key()
    with sdk(traced, key) as client:
        client.images.generate(model="test-image", prompt=PROMPT)
        with pytest.raises(openai.APIStatusError):
            client.images.generate(model="test-image", prompt=PROMPT, n=99)
    # Gemini's clients may send the key in the query string.
    httpx.post(f"{traced.running.base_url}/v1beta/models/test-image:generateContent?key={key}",
               json={"contents": [{"parts": [{"text": PROMPT}]}]})
    httpx.get(f"{traced.running.v1}/models", headers={"authorization": f"Bearer {key}"})
    token = secrets.token_hex(16)  # a callback URL's path is a capability
    httpx.post(f"{traced.running.base_url}/callbacks/sim-cheap/{token}", json={})
    time.sleep(0.3)
    spans = traced.exporter.get_finished_spans()
    assert len(spans) >= 8
    texts = [s.name for s in spans] + [str(v) for s in spans for v in (s.attributes or {}
                                                                        ).values()]
    for secret in (key, key[3:15], PROMPT, "Bearer", token):
        assert not any(secret in text for text in texts), secret
    assert any("/v1beta/models/{model}" in text for text in texts)


def test_queued_work_keeps_its_traceparent(database: str) -> None:
    """On SQLite and PostgreSQL: a job and a batch's items keep the creating request's."""
    with Store(database) as store:
        key = store.create_key("t")[0].id
        job = store.jobs.enqueue(key, "generations", b"{}", traceparent=TRACEPARENT)
        plain = store.jobs.enqueue(key, "generations", b"{}")
        staged = store.batches.stage(key, "/v1/images/generations", "file-x", "24h", None,
                                     [("a", b"{}"), ("b", b"{}")], b"", None, TRACEPARENT)
        store.batches.open(staged)
        claimed = store.jobs.claim_many(60, 10)
    assert {j.id: j.traceparent for j in claimed} == {
        job.id: TRACEPARENT, plain.id: None,
        **{j.id: TRACEPARENT for j in claimed if j.batch_id == staged.id}}
    assert sum(j.batch_id == staged.id for j in claimed) == 2


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    """A real request through an app built from a clean environment, in a fresh interpreter."""
    script = f"""
import os, sys
for name in list(os.environ):
    if name.startswith("OTEL_"):
        del os.environ[name]
from pathlib import Path
import openai
from tests.conftest import make_config, serve
with serve(make_config(Path({str(tmp_path)!r}))) as running:
    client = openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0)
    client.images.generate(model="test-image", prompt="x")
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("clean")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]


def test_the_environment_decides() -> None:
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/v1/traces"})
    assert not tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                                "OTEL_SDK_DISABLED": "true"})
    assert not tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                                "OTEL_TRACES_EXPORTER": "none"})


def test_an_async_host_shows_its_submit_polls_and_downloads() -> None:
    from proxy.providers import flows
    from proxy.providers.fal import ADAPTER
    from tests.fakes.fal import FakeFal
    from tests.protocol_kit import make_request
    from tests.test_protocol_fal import make_route

    exporter = InMemorySpanExporter()
    tracer = Tracer(exporter)
    fake = FakeFal(states=("IN_QUEUE", "IN_PROGRESS", "COMPLETED"))
    route, asked = make_route(), make_request(n=2)

    async def go() -> None:
        tracing.ACTIVE.set(tracer)
        with tracing.attempt(route, asked):
            async with httpx.AsyncClient(transport=fake) as client:
                await flows.generate(ADAPTER, route, asked, client, time.monotonic() + 10)

    asyncio.run(go())
    spans = exporter.get_finished_spans()
    attempt = one(spans, "attempt fal")
    calls = children(spans, attempt)
    polls = sum(str(seen.url).endswith("/status") for seen in fake.seen)
    assert polls >= 2
    # The submit, each status poll, the result, then each image downloaded.
    assert [s.name for s in calls] == ["submit fal", *["poll fal"] * polls, "fetch fal",
                                       "fetch fal", "fetch fal"]
    assert all(s.attributes and s.attributes["http.response.status_code"] == 200
               for s in calls)
    downloads = calls[-2:]  # the images, from fal's CDN
    assert {s.attributes["server.address"] for s in downloads  # type: ignore[index]
            } == {"v3.fal.media"}
    assert all(seen.headers.get("traceparent") for seen in fake.seen)
