"""Prometheus's switchyard_billed_usd_total must add up to the ledger's billed dollars. A job
run whose lease ran out while its host worked settles as `abandoned`, billed $0, under a row
of its own (api/ledger.py Ledger._settle), but metering.py counts the bill it computed into
switchyard_billed_usd_total anyway: the metric says the tenant was billed $0.02 the ledger
never billed (and the run that takes the job over counts its own bill again)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
from prometheus_client import REGISTRY

from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from tests.conftest import make_config, serve
from tests.test_fleet_takeover import _until


def billed_metric() -> Decimal:
    total = Decimal(0)
    for family in REGISTRY.collect():
        if family.name == "switchyard_billed_usd":
            for sample in family.samples:
                if sample.name == "switchyard_billed_usd_total" and \
                        sample.labels.get("model") == "test-image":
                    total += Decimal(str(sample.value))
    return total


def test_billed_metric_counts_only_what_the_ledger_billed(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", simulation_time_scale=1)
    with serve(config) as server, Store(config.database) as store:
        before = billed_metric()
        _, secret = store.create_key("k", limits=KeyLimits(budget_usd=Decimal("1")))
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
        # Another run took the job over (this run's lease ran out while its host worked).
        store.db.execute("UPDATE jobs SET claim_token = 'taken-over' WHERE id = ?", (job_id,))
        _until(lambda: bool(store.db.query(
            "SELECT 1 FROM ledger WHERE request_id LIKE ?", (job_id + ".%",))),
            "the first run's settle")
        time.sleep(0.2)
        (ledger_billed,) = store.db.query("SELECT COALESCE(SUM(billed_micros), 0) FROM ledger")[0]
        metric = billed_metric() - before
    assert int(ledger_billed) == 0  # the abandoned run billed nothing
    assert metric == Decimal(int(ledger_billed)) / 1_000_000, (
        f"switchyard_billed_usd_total grew by ${metric}; the ledger billed "
        f"${Decimal(int(ledger_billed)) / 1_000_000}")
