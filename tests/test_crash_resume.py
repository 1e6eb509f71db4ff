"""Work a crash cut off is neither paid twice nor hidden (issue 16.3), through real `switchyard
serve` processes stopped in the middle of their upstream calls and a new one started on the
same data directory.

A submit-then-poll host's task is polled again by the next run, not submitted again: the
host sees each submit once and each job is billed once. A synchronous host's call cannot be
resumed (the job runs again, unavoidably), but the call cut off is in the ledger as
`abandoned`: billed $0, its quote as upstream spend, so `switchyard usage` shows it.

The killed server's job leases would run out after request_timeout_s + 60 s; the tests run
them out at once instead (what the clock would do), and the new server claims the jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from proxy.billing.store import Store
from tests.fakes.slow_hosts import KEY_ENV, SlowHosts, catalog_files, running
from tests.serving import Served

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def hosts() -> Iterator[SlowHosts]:
    with running(SlowHosts(task_s=4.0, sync_s=3.0)) as started:
        yield started


class Setup:
    """A data directory with a key, and routes/ pointing at the slow hosts."""

    def __init__(self, tmp_path: Path, hosts: SlowHosts) -> None:
        routes = tmp_path / "routes"
        for name, text in catalog_files(hosts).items():
            (routes / name).parent.mkdir(parents=True, exist_ok=True)
            (routes / name).write_text(text)
        self.data_dir = tmp_path / "data"
        self.database = self.data_dir / "switchyard.db"
        with Store(self.database) as store:
            self.key = store.create_key("crash")[1]
        self.env = {"SWITCHYARD_ROUTES_DIR": str(routes), KEY_ENV: "k"}
        self.auth = {"authorization": f"Bearer {self.key}"}

    def serve(self) -> Served:
        return Served(self.data_dir, env=self.env)

    def enqueue(self, served: Served, model: str, ns: list[int]) -> list[str]:
        with httpx.Client(base_url=served.base, timeout=10) as client:
            jobs = [client.post("/v1/images/generations", headers={**self.auth, **ASYNC},
                                json={"model": model, "prompt": f"p{i}", "n": n,
                                      "size": "1024x1024"}) for i, n in enumerate(ns)]
        assert all(job.status_code == 202 for job in jobs), [j.text for j in jobs]
        return [str(job.json()["id"]) for job in jobs]

    def leases_run_out(self) -> None:
        with Store(self.database) as store:
            store.db.execute("UPDATE jobs SET lease_until = 0 WHERE state = 'processing'")

    def finished(self, served: Served, jobs: list[str], within_s: float = 40) -> dict[str, int]:
        """job id -> images delivered, once every job succeeded."""
        done: dict[str, int] = {}
        deadline = time.monotonic() + within_s
        with httpx.Client(base_url=served.base, timeout=10) as client:
            while len(done) < len(jobs) and time.monotonic() < deadline:
                for job in set(jobs) - set(done):
                    body = client.get(f"/v1/images/jobs/{job}", headers=self.auth).json()
                    assert body["status"] != "failed", body
                    if body["status"] == "succeeded":
                        done[job] = len(body["result"]["data"])
                time.sleep(0.1)
        assert len(done) == len(jobs), f"jobs did not finish:\n{served.log()}"
        return done

    def ledger(self) -> list[tuple[str, str, str, str, int, int]]:
        """(request id, outcome, provider, route, billed, upstream) per row."""
        with Store(self.database) as store:
            rows = store.db.query("SELECT request_id, outcome, provider, route, billed_micros, "
                                  "upstream_micros FROM ledger ORDER BY request_id")
        return [tuple(row) for row in rows]  # type: ignore[misc]

    def journal_left(self) -> int:
        with Store(self.database) as store:
            return store.journal.count()


def until(condition: Callable[[], bool], within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_tasks_cut_off_are_polled_again_not_submitted_again(
        tmp_path: Path, hosts: SlowHosts, sig: signal.Signals) -> None:
    setup = Setup(tmp_path, hosts)
    ns = [1, 1, 1, 1, 1, 2]  # the last fans out into two tasks (parts 0 and 1)
    with setup.serve() as first:
        jobs = setup.enqueue(first, "slow-task", ns)
        until(lambda: hosts.polled() == sum(ns))  # every task submitted and being polled
        first.stop(sig)
    setup.leases_run_out()
    assert hosts.submits == sum(ns)
    with setup.serve() as second:
        delivered = setup.finished(second, jobs)
    print(f"\n{signal.Signals(sig).name}: {hosts.submits} submits for {sum(ns)} tasks; "
          f"polls {sorted(hosts.polls.values())}")
    assert hosts.submits == sum(ns), "a task cut off was submitted (and paid for) again"
    assert delivered == dict(zip(jobs, ns, strict=True))
    rows = setup.ledger()
    assert [(r[0], r[1], r[4]) for r in rows] == sorted(
        (job, "success", n * 40_000) for job, n in zip(jobs, ns, strict=True))
    assert setup.journal_left() == 0


def test_sync_calls_cut_off_are_in_the_ledger_as_abandoned(
        tmp_path: Path, hosts: SlowHosts) -> None:
    setup = Setup(tmp_path, hosts)
    with setup.serve() as first:
        jobs = setup.enqueue(first, "slow-sync", [1] * 4)
        until(lambda: hosts.sync_calls == 4)  # all four at the host, none answered
        first.stop(signal.SIGKILL)
    setup.leases_run_out()
    with setup.serve() as second:
        setup.finished(second, jobs)
    assert hosts.sync_calls == 8  # run again: a synchronous call cannot be resumed
    rows = setup.ledger()
    abandoned = [r for r in rows if r[1] == "abandoned"]
    assert sorted(r[0] for r in rows if r[1] == "success") == sorted(jobs)
    assert all(r[4] == 30_000 for r in rows if r[1] == "success")
    assert sorted(r[0].split(".")[0] for r in abandoned) == sorted(jobs)
    assert {r[1:] for r in abandoned} == {("abandoned", "sync-host", "slow-sync/sync-host",
                                           0, 30_000)}
    usage = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--group-by", "model", "--csv"],
        env={**os.environ, **setup.env, "SWITCHYARD_DATA_DIR": str(setup.data_dir)},
        capture_output=True, text=True, check=True).stdout.splitlines()
    # The abandoned calls are upstream spend beside the runs that delivered: against the
    # images' price on the reference route (the model's first), routing "saved" -$0.12.
    assert usage == ["model,requests,succeeded,images,billed_usd,upstream_usd,reference_usd,"
                     "saved_usd", "slow-sync,4,4,4,0.12,0.24,0.12,-0.12"]
    assert setup.journal_left() == 0


def test_batch_items_cut_off_are_polled_again_not_submitted_again(
        tmp_path: Path, hosts: SlowHosts) -> None:
    setup = Setup(tmp_path, hosts)
    lines = b"".join(orjson.dumps({"custom_id": f"item-{i}", "method": "POST",
                                   "url": "/v1/images/generations",
                                   "body": {"model": "slow-task", "prompt": f"b{i}",
                                            "size": "1024x1024"}}) + b"\n"
                     for i in range(6))
    with setup.serve() as first, openai.OpenAI(base_url=first.base + "/v1", api_key=setup.key,
                                               max_retries=0) as sdk:
        uploaded = sdk.files.create(file=("in.jsonl", lines), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations",
                                   completion_window="24h")
        until(lambda: hosts.polled() == 6)
        first.stop(signal.SIGKILL)
    setup.leases_run_out()
    with setup.serve() as second, openai.OpenAI(base_url=second.base + "/v1",
                                                api_key=setup.key, max_retries=0) as sdk:
        deadline = time.monotonic() + 40
        while (done := sdk.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
        output = [orjson.loads(line) for line in
                  sdk.files.content(str(done.output_file_id)).content.splitlines()]
    assert hosts.submits == 6, "a batch item cut off was submitted (and paid for) again"
    assert done.request_counts is not None and done.request_counts.completed == 6
    assert sorted(o["custom_id"] for o in output) == [f"item-{i}" for i in range(6)]
    assert all(o["response"]["status_code"] == 200 for o in output)
    rows = setup.ledger()
    assert [(r[1], r[4]) for r in rows] == [("success", 40_000)] * 6
    assert setup.journal_left() == 0
