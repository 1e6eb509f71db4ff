"""Asynchronous image requests: 202 with a job, the job's status and result, signed webhooks
with retries, isolation per key, and jobs that survive a restart."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.billing.keys import digest
from proxy.billing.store import Store
from proxy.providers import webhooks
from tests.conftest import Running, free_socket, make_config, serve

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    # The receivers here listen on loopback: the operator's allow-list opens it on purpose.
    with serve(make_config(tmp_path / "data", callback_allow_cidrs="127.0.0.0/8")) as server:
        yield server


def submit(server: Running, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.v1}/images/generations", headers={
        "authorization": f"Bearer {key}", **ASYNC}, json={"model": "test-image",
                                                           "prompt": "x", **body})


def wait_for(server: Running, key: str, job_id: str, within_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{server.v1}/images/jobs/{job_id}",
                                        headers={"authorization": f"Bearer {key}"}).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_respond_async_queues_and_the_job_reports_the_images(
        running: Running, validate: Callable[[str, Any], None]) -> None:
    key = running.new_key()
    accepted = submit(running, key, n=2)
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["object"] == "image.job" and job["status"] == "queued"
    assert accepted.headers["location"] == f"/v1/images/jobs/{job['id']}"
    done = wait_for(running, key, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    validate("ImagesResponse", done["result"])
    assert len(done["result"]["data"]) == 2 and done["completed_at"] >= done["created_at"]
    with running.store() as store:
        entry = store.money.entry(job["id"])
    assert entry is not None and entry.n_delivered == 2 and entry.billed_micros == 40_000


def test_the_sdk_can_ask_for_async_too(running: Running) -> None:
    key = running.new_key()
    with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="test-image", prompt="x",
                                                    extra_headers=ASYNC)
    assert raw.http_response.status_code == 202
    assert wait_for(running, key, raw.http_response.json()["id"])["status"] == "succeeded"


def test_a_bad_request_is_refused_before_it_is_queued(running: Running) -> None:
    key = running.new_key()
    refused = submit(running, key, n=99)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
    bad_hook = submit(running, key, callback_url="ftp://example.com/x")
    assert bad_hook.status_code == 400 and bad_hook.json()["error"]["param"] == "callback_url"
    with running.store() as store:
        assert store.db.query("SELECT COUNT(*) FROM jobs")[0][0] == 0


def test_a_failed_job_keeps_its_openai_error(running: Running) -> None:
    """The key was revoked after the job was queued: the job fails with the OpenAI error."""
    from proxy.api.jobs import describe

    with running.store() as store:
        record, _ = store.create_key("gone")
        store.revoke_key(record.id)
        job = store.jobs.enqueue(record.id, "generations",
                                 orjson.dumps({"model": "test-image", "prompt": "x"}))
        deadline = time.monotonic() + 10
        while (found := store.jobs.get(job.id)) and found.state not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert found is not None
    done = describe(found)
    assert done["status"] == "failed" and done["result"] is None
    assert (done["error"]["code"], done["error"]["status"]) == ("invalid_api_key", 401)


def test_a_key_sees_only_its_own_jobs(running: Running) -> None:
    mine, theirs = running.new_key("a"), running.new_key("b")
    job = submit(running, mine).json()
    peek = httpx.get(f"{running.v1}/images/jobs/{job['id']}",
                     headers={"authorization": f"Bearer {theirs}"})
    assert peek.status_code == 404


class Receiver:
    """A webhook endpoint on loopback: answers the scripted statuses, records deliveries."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.seen: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = http.server.HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


def test_a_callback_url_gets_a_signed_webhook(running: Running) -> None:
    receiver = Receiver([200])
    key = running.new_key()
    job = httpx.post(f"{running.v1}/images/generations", headers={
        "authorization": f"Bearer {key}"}, json={"model": "test-image", "prompt": "x",
                                                  "callback_url": receiver.url}).json()
    deadline = time.monotonic() + 10
    while not receiver.seen and time.monotonic() < deadline:
        time.sleep(0.05)
    receiver.stop()
    (headers, body), = receiver.seen
    with running.store() as store:
        found = store.find_key(digest(key))
        assert found is not None
        secrets = store.webhook_secrets.of_key(found[1].id)
    assert secrets is not None and secrets.current is not None
    whsec = secrets.current  # the key's own (issue 18.8; tests/test_webhook_secrets.py)
    assert webhooks.verify(headers, body, whsec, time.time())
    assert not webhooks.verify(headers, body + b" ", whsec, time.time())
    event = orjson.loads(body)
    assert event["type"] == "image.job.succeeded" and event["data"]["id"] == job["id"]
    assert headers["webhook-id"] == job["id"]


def test_a_failed_webhook_is_retried_later(running: Running) -> None:
    receiver = Receiver([500])
    key = running.new_key()
    job = submit(running, key, callback_url=receiver.url).json()
    deadline = time.monotonic() + 10
    with running.store() as store:
        while time.monotonic() < deadline:
            rows = store.db.query("SELECT webhook_state, webhook_attempts, webhook_after "
                                  "FROM jobs WHERE id = ?", (job["id"],))
            if rows[0][1] >= 1:
                break
            time.sleep(0.05)
    receiver.stop()
    state, attempts, after = rows[0]
    assert (state, attempts) == ("due", 1) and after >= time.time() + 3


def test_queued_jobs_survive_a_restart(tmp_path: Path) -> None:
    """Jobs queued (or left processing by a worker that died) are run by the next server."""
    config = make_config(tmp_path / "data")
    with Store(config.database) as store:
        record, key = store.create_key("k")
        body = orjson.dumps({"model": "test-image", "prompt": "x"})
        queued = store.jobs.enqueue(record.id, "generations", body)
        orphan = store.jobs.enqueue(record.id, "generations", body)
        assert store.jobs.claim(lease_s=-1) is not None  # leased by a "dead" worker, expired
    with serve(config) as running:
        for job_id in (queued.id, orphan.id):
            assert wait_for(running, key, job_id)["status"] == "succeeded"
    with Store(config.database) as store:
        assert store.db.query("SELECT COUNT(*) FROM ledger")[0][0] == 2
