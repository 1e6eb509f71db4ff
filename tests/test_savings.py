"""What routing saved: the same images priced on each model's reference route (the first in its
catalog file, or the configured one), in the ledger's reports, the usage API and the CLI; and
the console's other reads of the ledger, jobs and batches, on both database engines."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from proxy import cli
from proxy.app import load_catalog
from proxy.billing import activity, savings
from proxy.billing.rows import Entry
from proxy.billing.store import Store
from proxy.billing.usage import Reference
from proxy.catalog import CatalogError, inventory
from proxy.config import default_routes_dir
from proxy.providers import ADAPTERS
from tests.conftest import FIXTURES, make_config, serve

D = Decimal
ROUTES = FIXTURES / "routes"
DAY = 86400 * 20_400  # 2025-11-08


def entry(request_id: str, model: str, tier: str, images: int, upstream: int,
          key_id: str = "key_a", outcome: str = "success", when: int = DAY) -> Entry:
    return Entry(request_id, key_id, "t", model, "sim-cheap", f"{model}/sim-cheap", tier,
                 images, images, upstream, upstream, 900, outcome, None, 1, None, None, when)


def test_each_tier_is_priced_on_the_reference_route(tmp_path: Path) -> None:
    reference = Reference({"m": {"1K": D("0.05"), "2K": D("0.08")}})
    with Store(tmp_path / "s.db") as store:
        store.money.settle(None, entry("r1", "m", "1K", 2, 40_000))  # $0.04 for 2 images
        store.money.settle(None, entry("r2", "m", "2K", 1, 40_000, when=DAY + 86400))
        store.money.settle(None, entry("r3", "m", "4K", 1, 300_000))  # no reference price
        # A failure that cost upstream money (a lost hedge, say) counts against routing.
        store.money.settle(None, entry("r4", "m", "1K", 0, 10_000, outcome="timeout"))
        store.money.settle(None, entry("r5", "other", "1K", 1, 7_000, key_id="key_b"))
        (row,) = store.usage.report(["model"], key_id="key_a", reference=reference)
        by_day = store.usage.report(["day"], reference=reference)
        plain = store.usage.report(["key"])
    # 2 x 0.05 + 1 x 0.08 + 0.30 (priced as it cost) = 0.48 against 0.39 spent
    assert (row.images, row.upstream_usd, row.reference_usd) == (4, D("0.39"), D("0.48"))
    assert row.saved_usd == D("0.09")
    assert [(r.group["day"], r.reference_usd, r.saved_usd) for r in by_day] == [
        ("2025-11-08", D("0.407"), D("0.05")), ("2025-11-09", D("0.08"), D("0.04"))]
    assert all(r.saved_usd == 0 for r in plain), "without a reference, nothing is saved"


def test_a_request_the_reference_route_served_alone_is_priced_at_its_cost(
        tmp_path: Path) -> None:
    """A route that bills input tokens costs more than its price per image: the reference
    must not show routing losing what the reference route itself charged."""
    reference = Reference({"m": {"1K": D("0.1344")}}, {"m": "sim-cheap"})
    with Store(tmp_path / "s.db") as store:
        store.money.settle(None, entry("r1", "m", "1K", 1, 143_430))  # its input billed too
        (alone,) = store.usage.report(["model"], reference=reference)
        store.money.settle(None, dataclasses.replace(  # a failover: priced on the reference
            entry("r2", "m", "1K", 1, 150_000), attempts=2))
        (both,) = store.usage.report(["model"], reference=reference)
    assert (alone.reference_usd, alone.saved_usd) == (D("0.14343"), 0)
    assert (both.reference_usd, both.saved_usd) == (D("0.14343") + D("0.1344"), D("-0.0156"))


def test_every_member_of_a_reference_key_pool_is_the_reference(tmp_path: Path) -> None:
    """A key pool splits a provider into members, routes of their own (`model/google.<id>`):
    each is the reference, in the server's report and in one made without the keys."""
    pool = {"GEMINI_API_KEY": "AIzaSyFIRST000000000000000000000000000,"
                              "AIzaSySECOND00000000000000000000000000"}
    shipped = default_routes_dir()
    (model,) = [m for m in inventory(shipped, pool, ADAPTERS) if m.name == "nano-banana-pro"]
    members = [r for r in model.routes if r.provider.family == "google"]
    assert len(members) == 2
    cost = 1120 * 120 + 600 * 2  # its image and 600 input tokens, as Google billed them
    with Store(tmp_path / "s.db") as store:
        for i, route in enumerate(members):
            store.money.settle(None, dataclasses.replace(
                entry(f"r{i}", model.name, "1K", 1, cost), provider=route.provider.name,
                route=route.id))
        reports = [store.usage.report(["provider"], reference=savings.for_config(
            shipped, chosen, env)) for env in (pool, {}) for chosen in ({}, {model.name:
                                                                          "google"})]
    assert [[row.saved_usd for row in rows] for rows in reports] == [[0, 0]] * 4


def test_only_the_reference_and_its_pool_members_are_the_reference() -> None:
    reference = Reference({}, {"m": "google"})
    assert reference.served("m", "m/google") and reference.served("m", "m/google.a21b2f")
    assert not reference.served("m", "m/google-batch")
    assert not reference.served("m", "m/google.eu.a21b2f") and not reference.served("m", None)


def test_the_reference_is_the_first_route_unless_configured() -> None:
    models = inventory(ROUTES, {}, ADAPTERS)
    assert savings.describe(models, {})["test-image"] == "sim-cheap"
    chosen = savings.describe(models, {"test-image": "sim-fast"})
    assert chosen["test-image"] == "sim-fast" and chosen["test-failover"] == "sim-broken"
    prices = savings.reference_prices(models, {"test-image": "sim-fast"})
    assert prices["test-image"] == {"1K": D("0.05"), "2K": D("0.08")}
    with pytest.raises(savings.ReferenceError, match="no route on 'sim-nope'"):
        savings.reference_routes(models, {"test-image": "sim-nope"})
    with pytest.raises(savings.ReferenceError, match="no model 'ghost'"):
        savings.reference_routes(models, {"ghost": "sim-fast"})


def test_a_wrong_reference_stops_startup(tmp_path: Path) -> None:
    config = make_config(tmp_path, reference_routes={"test-image": "sim-nope"})
    with pytest.raises(CatalogError, match="sim-nope"):
        load_catalog(config, env={})


def test_the_usage_api_and_the_cli_report_the_same_savings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One image on sim-cheap ($0.02) against the configured reference, sim-fast ($0.05)."""
    admin = "admin-key-for-savings"
    config = make_config(tmp_path / "data", admin_key=admin,
                         reference_routes={"test-image": "sim-fast"})
    with serve(config) as running:
        key = running.new_key("saver")
        with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
            sdk.images.generate(model="test-image", prompt="x")
        own = httpx.get(f"{running.v1}/usage", params={"group_by": "model"},
                        headers={"authorization": f"Bearer {key}"}).json()["data"]
        assert own == [{"model": "test-image", "requests": 1, "succeeded": 1, "images": 1,
                        "billed_usd": "0.02", "upstream_usd": "0.02",
                        "reference_usd": "0.05", "saved_usd": "0.03"}]
        csv = httpx.get(f"{running.base_url}/admin/usage",
                        params={"group_by": "day,model,provider,key", "format": "csv"},
                        headers={"authorization": f"Bearer {admin}"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    monkeypatch.setenv("SWITCHYARD_ROUTES_DIR", str(ROUTES))
    monkeypatch.setenv("SWITCHYARD_REFERENCE_ROUTES", "test-image=sim-fast")
    capsys.readouterr()
    assert cli.main(["usage", "--csv", "--group-by", "day,model,provider,key",
                     "--data-dir", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert printed == csv.text
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert printed.splitlines()[1].startswith(f"{day},test-image,sim-cheap,key_")
    assert printed.splitlines()[1].endswith(",1,1,1,0.02,0.02,0.05,0.03")


def test_activity_reads_the_same_on_both_engines(database: str) -> None:
    """The console's reads (proxy/billing/activity.py) on SQLite and PostgreSQL: requests
    newest first, a job, a batch's progress, and p50/p95 per route and tier."""
    with Store(database) as store:
        for i, ms in enumerate((100, 200, 300, 400)):
            store.money.settle(None, dataclasses.replace(
                entry(f"r{i}", "m", "1K", 1, 10_000, when=DAY + i), latency_ms=ms))
        store.money.settle(None, entry("r9", "m", "1K", 0, 0, key_id="key_b",
                                       outcome="timeout", when=DAY + 9))
        job = store.jobs.enqueue("key_a", "generations", b'{"prompt": "secret"}')
        batch = store.batches.create("key_a", "/v1/images/generations", "file_1", "24h", None,
                                     [("one", b"{}"), ("two", b"{}")], b"")
        latest = activity.requests(store.db, None, 3)
        mine = activity.requests(store.db, "key_a", 10)
        jobs = activity.jobs(store.db, "key_a", 10)
        batches = activity.batches(store.db, "key_a", 10)
        seen = activity.latencies(store.db)
    assert [r.request_id for r in latest] == ["r9", "r3", "r2"]
    assert len(mine) == 4 and {r.key_id for r in mine} == {"key_a"}
    assert [(j.id, j.kind, j.state, j.done) for j in jobs] == [(job.id, "job", "queued", 0)]
    assert [(b.id, b.total, b.done) for b in batches] == [(batch.id, 2, 0)]
    assert seen == {("m/sim-cheap", "1K"): activity.Observed(0.2, 0.4, 4)}
