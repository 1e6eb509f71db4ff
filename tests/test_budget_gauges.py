"""switchyard_budget_remaining_usd follows the key, not only its last request: an admin's
revoke takes the gauge away and a budget change sets it again at once, and the budget sweep
does the same for what changed elsewhere (another replica's admin call, a new period). Before,
a key kept its last value until its next request (never, once revoked), so the
SwitchyardBudgetNearlySpent alert fired for good (helper-46)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import httpx

from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from tests.conftest import make_config, serve

ADMIN = "adm-" + "x" * 40


def _gauge(text: str, key_id: str) -> float | None:
    found = re.search(rf'^switchyard_budget_remaining_usd\{{key="{key_id}"\}} (\S+)$', text,
                      re.M)
    return float(found.group(1)) if found else None


def test_the_gauge_follows_a_revoke_and_a_budget_change(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", admin_key=ADMIN)
    with serve(config) as server, Store(config.database) as store:
        revoked, raised = (store.create_key(name, limits=KeyLimits(budget_usd=Decimal("0.5")))
                           for name in ("revoked", "raised"))
        for _, secret in (revoked, raised):
            assert httpx.post(server.v1 + "/images/generations", timeout=30,
                              headers={"authorization": f"Bearer {secret}"},
                              json={"model": "test-image", "prompt": "x"}).status_code == 200
        admin = {"authorization": f"Bearer {ADMIN}"}
        shown = httpx.get(server.base_url + "/metrics", headers=admin).text
        assert all((_gauge(shown, key.id) or 1) < 0.5 for key, _ in (revoked, raised))
        assert httpx.post(f"{server.base_url}/admin/keys/{revoked[0].id}/revoke",
                          headers=admin).status_code == 200
        assert httpx.patch(f"{server.base_url}/admin/keys/{raised[0].id}", headers=admin,
                           json={"budget_usd": 100}).status_code == 200
        shown = httpx.get(server.base_url + "/metrics", headers=admin).text
        assert _gauge(shown, revoked[0].id) is None
        assert (_gauge(shown, raised[0].id) or 0) > 99

        # Another replica lowers it: this one's budget sweep sets the gauge again.
        store.update_limits(raised[0].id, replace(raised[0].limits, budget_usd=Decimal(1)))
        server.app.state.services.budget_gauges.refresh(store)
        shown = httpx.get(server.base_url + "/metrics", headers=admin).text
        assert (_gauge(shown, raised[0].id) or 99) < 1


SCRIPT = r"""
import os, sys
from decimal import Decimal
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from proxy.api.budget_gauges import BudgetGauges
from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store

gauges = BudgetGauges()
with Store(sys.argv[2]) as store:
    record, _ = store.create_key("k", limits=KeyLimits(budget_usd=Decimal("0.5")))
    gauges.show(record.id, record, Decimal("0.1"), Decimal(0))
    store.revoke_key(record.id)
    gauges.refresh(store, [record.id])
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print("".join(line for line in generate_latest(registry).decode().splitlines()
              if record.id in line))
"""


def test_under_workers_a_revoked_key_s_gauge_is_nan(tmp_path: Path) -> None:
    """A worker's values stay in its file (prometheus multiprocess mode), so there a revoked
    key's gauge is NaN, which no alert compares true (helper-47: it stayed at its last
    value)."""
    (tmp_path / "metrics").mkdir()
    shown = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "metrics"),
                            str(tmp_path / "db.sqlite")], capture_output=True, text=True,
                           timeout=120, check=True).stdout.strip()
    assert shown.startswith("switchyard_budget_remaining_usd{") and shown.endswith(" NaN"), shown
