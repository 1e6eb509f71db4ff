"""A queued request (an async job, a batch item) taken over by another run, because the run
that held it was killed or its lease ran out while it went on, is billed once, by the run that
writes its outcome, and no hold of the run it replaced is left in the way (helper-45).

Before: a killed replica's budget hold stayed a day (a batch item's hold outlives its patience),
so the run that took the item over could not reserve within a budget that covered the item
once, and failed it with insufficient_quota; and a run whose lease had run out still billed its
success, while the job's outcome was the failure of the run that took it over.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from proxy.billing.amounts import micros
from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from tests.conftest import make_config, serve
from tests.databases import own_database
from tests.serving import Served
from tests.test_batches import ENDPOINT, finished, jsonl, lines_of

BUDGET = Decimal("1")


def _until(condition: Callable[[], bool], what: str, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_new_run_releases_the_holds_of_runs_that_no_longer_hold_the_job(
        database: str) -> None:
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal("0.03")))[0].id
        budget = micros(Decimal("0.03"))
        job = store.jobs.enqueue(key, "generations", b"{}")
        now = store.jobs.clock()
        died = store.jobs.claim(1, now=now)
        assert died is not None
        assert store.money.reserve(key, "total", 20_000, budget, 3600, job.id,
                                   died.claim) is not None
        # Its replica died; the run that takes the job over fits where a second hold would not.
        taken = store.jobs.claim(60, now=now + 10)
        assert taken is not None and taken.claim != died.claim
        assert store.money.reserve(key, "total", 20_000, budget, 3600, "imgjob_other") is None
        assert store.money.reserve(key, "total", 20_000, budget, 3600, job.id,
                                   taken.claim) is not None
        assert store.money.spent(key, "total") == (Decimal(0), Decimal("0.02"))


def test_a_stale_run_s_reserve_leaves_the_hold_of_the_run_that_holds_the_job(
        database: str) -> None:
    """A run that stalled between its claim and its reserve, past its lease, reserves after
    the run that took the job over: the live run's hold stays (helper-47: it was released, and
    the key could then overspend by what the live run bills)."""
    with Store(database) as store:
        key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal(1)))[0].id
        dollar = micros(Decimal(1))
        job = store.jobs.enqueue(key, "generations", b"{}")
        now = store.jobs.clock()
        stale = store.jobs.claim(1, now=now)
        live = store.jobs.claim(60, now=now + 10)
        assert stale is not None and live is not None
        assert store.money.reserve(key, "total", dollar, dollar, None, job.id,
                                   live.claim) is not None
        late = store.money.reserve(key, "total", dollar, dollar, None, job.id, stale.claim)
        assert late is None  # the live run's hold stands: no room for a second
        assert store.money.reserve(key, "total", dollar, dollar) is None


def test_a_run_whose_lease_ran_out_bills_nothing(tmp_path: Path) -> None:
    """The run of an async job is taken over while its host works (a run elsewhere claimed it
    after this one's lease ran out); this run's success then settles as abandoned under a row
    of its own, billed nothing, its hold given back; the job's outcome is the other run's."""
    config = make_config(tmp_path / "data", simulation_time_scale=1)
    with serve(config) as server, Store(config.database) as store:
        key, secret = store.create_key("k", limits=KeyLimits(budget_usd=BUDGET))
        billed_before = billed_metric()
        answer = httpx.post(server.v1 + "/images/generations",
                            json={"model": "test-image", "prompt": "p"},
                            headers={"authorization": f"Bearer {secret}",
                                     "prefer": "respond-async"}, timeout=30)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]

        def running() -> bool:
            job = store.jobs.get(job_id)
            return job is not None and job.state == "processing"
        _until(running, "the job to run")
        store.db.execute("UPDATE jobs SET claim_token = 'taken-over' WHERE id = ?",
                         (job_id,))
        _until(lambda: bool(store.db.query(
            "SELECT 1 FROM ledger WHERE request_id LIKE ?", (job_id + ".%",))),
            "the first run's settle")
        assert store.money.entry(job_id) is None
        assert store.money.spent(key.id, "total") == (Decimal(0), Decimal(0))
        # switchyard_billed_usd_total counts what the ledger billed (it counted this bill).
        assert billed_metric() == billed_before
        # The run that holds the job now fails it: nothing was billed for it.
        assert store.jobs.finish(job_id, 400, b'{"error": {}}', claim="taken-over") == []
        assert store.money.spent(key.id, "total") == (Decimal(0), Decimal(0))
        (row,) = store.db.query("SELECT outcome, billed_micros, upstream_micros FROM ledger "
                                "WHERE request_id LIKE ?", (job_id + ".%",))
        assert (row[0], int(row[1])) == ("abandoned", 0) and int(row[2]) > 0


def billed_metric() -> float:
    """switchyard_billed_usd_total of this process, over every label."""
    return sum(sample.value for family in REGISTRY.collect()
               if family.name == "switchyard_billed_usd" for sample in family.samples
               if sample.name == "switchyard_billed_usd_total")


def test_an_item_taken_over_from_a_killed_replica_is_not_refused_by_its_old_hold(
        tmp_path: Path) -> None:
    """Two real replicas on one PostgreSQL database: A runs a batch item on a host that
    never answers in time and is killed with -9; its lease runs out, and B finishes the batch
    within a budget that covers the item once."""
    with own_database("sy_takeover") as database:
        with Store(database) as store:
            # test-image's cheapest route costs $0.02 an image; the budget covers one.
            key = store.create_key("k", limits=KeyLimits(budget_usd=Decimal("0.03")))[1]
        env = {"SWITCHYARD_DATABASE_URL": database}
        with Served(tmp_path / "a", env={**env, "SWITCHYARD_SIMULATION_TIME_SCALE": "1000"}) as a:
            sdk = openai.OpenAI(base_url=f"{a.base}/v1", api_key=key, max_retries=0)
            upload = sdk.files.create(file=("in.jsonl", jsonl([{"model": "test-image",
                                                                 "prompt": "x"}])),
                                      purpose="batch")
            batch_id = sdk.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                          completion_window="24h").id

            def held() -> bool:
                with Store(database) as s:
                    return bool(s.db.query("SELECT 1 FROM reservations")) and bool(
                        s.db.query("SELECT 1 FROM jobs WHERE state = 'processing'"))
            _until(held, "A's item running, with its hold")
            a.stop(signal.SIGKILL)
        with Store(database) as store:  # A's lease runs out now, not in minutes
            store.db.execute("UPDATE jobs SET lease_until = 0 WHERE state = 'processing'")
        with Served(tmp_path / "b", env=env) as b:
            sdk = openai.OpenAI(base_url=f"{b.base}/v1", api_key=key, max_retries=0)
            done = finished(sdk, batch_id, within_s=30)
            errors = lines_of(sdk, done.error_file_id)
            output = lines_of(sdk, done.output_file_id)
        assert [line["response"]["body"]["error"]["code"] for line in errors] == []
        assert len(output) == 1
        with Store(database) as store:
            assert store.db.query("SELECT COUNT(*) FROM reservations")[0][0] == 0
