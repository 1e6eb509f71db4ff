"""The console's JSON (route health, activity, budgets) and its page, against a real server:
admin only where it says so, a tenant sees only its own, bad input is a 400 naming the
parameter, and the page runs nothing inline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from proxy.api import console
from tests.conftest import Running, make_config, serve

ADMIN = "admin-secret-for-console-tests"
PROMPT = "a secret prompt about lighthouses"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = make_config(tmp_path_factory.mktemp("data"), admin_key=ADMIN)
    with serve(config) as server:
        yield server


@pytest.fixture(scope="module")
def admin(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.base_url,
                      headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield client


def tenant(admin: httpx.Client, name: str, **limits: Any) -> tuple[str, str]:
    """A new key's (id, secret), made through the admin API."""
    created = admin.post("/admin/keys", json={"name": name, **limits}).json()
    return created["id"], created["key"]


def generate(running: Running, key: str, model: str = "test-image") -> None:
    with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        sdk.images.generate(model=model, prompt=PROMPT)


def test_routes_show_prices_live_health_and_each_strategys_pick(
        running: Running, admin: httpx.Client) -> None:
    _, key = tenant(admin, "routes")
    generate(running, key)
    response = admin.get("/admin/routes", params={"model": "ti"})  # an alias
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    (model,) = body["data"]
    assert model["model"] == "test-image" and model["tiers"] == ["0.5K", "1K", "2K"]
    cheap, fast = model["routes"]
    assert (cheap["provider"], fast["provider"]) == ("sim-cheap", "sim-fast")
    assert cheap["tiers"]["1K"]["price_usd"] == "0.02"
    assert "0.5K" not in fast["tiers"], "a tier the route does not serve has no entry"
    assert cheap["tiers"]["1K"]["samples"] >= 1 and cheap["tiers"]["1K"]["p50_s"] is not None
    assert cheap["outcomes"] >= 1 and cheap["success_ratio"] == 1.0
    assert (cheap["breaker"], cheap["available"], cheap["rest"]) == ("closed", True, None)
    assert cheap["host_cap"] == 16 and cheap["host_in_flight"] == 0
    assert model["picks"]["1K"]["cheapest"] == "test-image/sim-cheap"
    assert model["picks"]["1K"]["fastest"] == "test-image/sim-fast"
    assert model["picks"]["0.5K"]["fastest"] == "test-image/sim-cheap"  # the only one
    assert set(body["strategies"]) == {"cheapest", "fastest", "balanced", "ordered"}
    every = admin.get("/admin/routes").json()["data"]
    assert {m["model"] for m in every} == {"test-image", "test-failover", "test-down"}


def test_a_broken_route_shows_its_breaker_and_why_it_rests(
        running: Running, admin: httpx.Client) -> None:
    _, key = tenant(admin, "breaker")
    route: dict[str, Any] = {}
    with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        for _ in range(15):  # the breaker opens on 5 failures in a row, or half of 10
            with pytest.raises(openai.APIStatusError):
                sdk.images.generate(model="test-down", prompt="x")
            (route,) = admin.get("/admin/routes", params={"model": "test-down"}).json()[
                "data"][0]["routes"]
            if route["breaker"] != "closed":
                break
    assert route["success_ratio"] == 0.0 and route["outcomes"] >= 3
    assert route["breaker"] in ("open", "half_open") and route["rest"]
    assert not route["available"] or route["breaker"] == "half_open"


def test_a_tenant_sees_its_own_activity_and_the_admin_sees_all(
        running: Running, admin: httpx.Client) -> None:
    mine_id, mine = tenant(admin, "mine")
    other_id, other = tenant(admin, "other")
    generate(running, mine)
    generate(running, other)
    own = httpx.get(f"{running.v1}/activity", headers={"authorization": f"Bearer {mine}"})
    assert own.status_code == 200
    requests = own.json()["requests"]
    assert {r["key_id"] for r in requests} == {mine_id}
    (row,) = requests
    assert (row["outcome"], row["provider"], row["attempts"]) == ("success", "sim-cheap", 1)
    assert row["billed_usd"] == "0.02" and row["upstream_usd"] == "0.02"
    assert PROMPT not in own.text and "prompt" not in row
    everyone = admin.get("/admin/activity").json()["requests"]
    assert {mine_id, other_id} <= {r["key_id"] for r in everyone}
    one = admin.get("/admin/activity", params={"key": other_id, "limit": 5}).json()
    assert {r["key_id"] for r in one["requests"]} == {other_id}
    assert one["jobs"] == [] and one["batches"] == []


def test_async_jobs_appear_with_their_progress(running: Running, admin: httpx.Client) -> None:
    key_id, key = tenant(admin, "async")
    response = httpx.post(f"{running.v1}/images/generations",
                          headers={"authorization": f"Bearer {key}",
                                   "prefer": "respond-async"},
                          json={"model": "test-image", "prompt": PROMPT})
    assert response.status_code == 202, response.text
    jobs = admin.get("/admin/activity", params={"key": key_id}).json()["jobs"]
    assert [j["id"] for j in jobs] == [response.json()["id"]]
    assert jobs[0]["kind"] == "job" and jobs[0]["total"] == 1


def test_budgets_say_what_each_key_spent_this_period(
        running: Running, admin: httpx.Client) -> None:
    key_id, key = tenant(admin, "budgeted", budget_usd="1", budget_period="monthly")
    generate(running, key)
    (budget,) = [b for b in admin.get("/admin/budgets").json()["data"]
                 if b["key_id"] == key_id]
    assert budget["budget_usd"] == "1" and budget["spent_usd"] == "0.02"
    assert re.fullmatch(r"\d{4}-\d{2}", budget["period"])


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/admin/routes", {"model": "no-such-model"}, "model"),
    ("/admin/routes", {"model": "a\x00b"}, "model"),
    ("/admin/activity", {"limit": "0"}, "limit"),
    ("/admin/activity", {"limit": "many"}, "limit"),
    ("/admin/activity", {"limit": "201"}, "limit"),
    ("/admin/activity", {"key": "k\x00"}, "key"),
    ("/admin/usage", {"format": "xml"}, "format"),
])
def test_bad_input_is_a_400_naming_the_parameter(
        admin: httpx.Client, path: str, params: dict[str, str], param: str) -> None:
    response = admin.get(path, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("path", ["/admin/routes", "/admin/activity", "/admin/budgets"])
def test_the_console_api_needs_the_admin_key(running: Running, admin: httpx.Client,
                                             path: str) -> None:
    _, key = tenant(admin, "not-admin")
    for headers in ({}, {"authorization": f"Bearer {key}"}):
        response = httpx.get(running.base_url + path, headers=headers)
        assert response.status_code == 401 and key not in response.text
    assert httpx.get(f"{running.v1}/activity").status_code == 401


def test_without_an_admin_key_only_the_tenant_view_works(server: Running) -> None:
    key = server.new_key("tenant-only")
    for path in ("/admin/routes", "/admin/activity", "/admin/budgets"):
        response = httpx.get(server.base_url + path, headers={"authorization": "Bearer x"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_api_disabled"
    response = httpx.get(f"{server.v1}/activity", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200 and response.json()["requests"] == []


def test_the_page_runs_only_its_own_files(running: Running) -> None:
    page = httpx.get(f"{running.base_url}/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy and "form-action 'none'" in policy
    assert "set-cookie" not in page.headers
    assert "access-control-allow-origin" not in page.headers
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), "no inline style or handler"
    for name in re.findall(r'(?:src|href)="/console/([^"]+)"', html):
        shipped = httpx.get(f"{running.base_url}/console/{name}")
        assert shipped.status_code == 200, name
        assert shipped.headers["content-security-policy"] == policy
    assert httpx.get(f"{running.base_url}/console/secrets.py").status_code == 404
    assert httpx.get(f"{running.base_url}/console/..%2Fconsole.py").status_code == 404


def test_static_files_are_small_and_never_write_markup_from_data() -> None:
    files = console.files()
    assert {"index.html", "app.js", "console.css"} <= set(files)
    for name, body in files.items():
        text = body.decode()
        assert text.count("\n") < 400, f"{name} is past ~400 lines"
        if name.endswith(".js"):
            assert "innerHTML" not in text and "eval(" not in text, name
            assert "console.log" not in text and "document.cookie" not in text, name
            assert "localStorage" not in text, f"{name}: the key stays in the tab only"
