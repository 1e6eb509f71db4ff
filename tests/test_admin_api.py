"""The admin API (keys and usage) and /v1/usage, against a real server: admin auth, keys shown
once, limits validated, revocation and rotation at once, usage isolated per key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Running, make_config, serve

ADMIN = "admin-secret-for-tests"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with serve(make_config(tmp_path / "data", admin_key=ADMIN)) as server:
        yield server


@pytest.fixture
def admin(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.base_url,
                      headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield client


def create(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/admin/keys", json={"name": "acme", **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.mark.parametrize("token", [None, "wrong", "sy-not-an-admin"])
def test_the_admin_api_needs_the_admin_key(running: Running, token: str | None) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{running.base_url}/admin/keys", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_key"


def test_without_an_admin_key_the_admin_api_is_off(server: Running) -> None:
    response = httpx.get(f"{server.base_url}/admin/keys",
                         headers={"authorization": "Bearer anything"})
    assert response.status_code == 403 and "SWITCHYARD_ADMIN_KEY" in response.text


def test_create_shows_the_key_once_and_it_works(running: Running, admin: httpx.Client) -> None:
    created = create(admin, tenant="acme-corp", budget_usd="5", budget_period="monthly",
                     rpm=100, allowed_models=["test-image"], strategy="fastest")
    key, secret = created.pop("key"), created.pop("webhook_secret")
    assert key.startswith("sy-") and secret.startswith("whsec_")
    assert created["tenant"] == "acme-corp"
    assert created["budget_usd"] == "5" and created["allowed_models"] == ["test-image"]
    listed = admin.get("/admin/keys").json()["data"]
    assert key not in str(listed) and secret not in str(listed)
    assert listed[0]["id"] == created["id"]
    assert admin.get(f"/admin/keys/{created['id']}").json() == created
    with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="test-image", prompt="x")
    assert raw.headers["x-switchyard-provider"] == "sim-fast"  # the key's strategy


@pytest.mark.parametrize(("body", "param"), [
    ({}, "name"),
    ({"name": "a", "rpm": 0}, "rpm"),
    ({"name": "a", "rpm": "many"}, "rpm"),
    ({"name": "a", "budget_usd": -1}, "budget_usd"),
    ({"name": "a", "budget_period": "weekly"}, "budget_period"),
    ({"name": "a", "strategy": "random"}, "strategy"),
    ({"name": "a", "allowed_models": "test-image"}, "allowed_models"),
    ({"name": "a", "plan": "platinum"}, "plan"),
    ({"name": "a", "colour": "blue"}, "colour"),
    ({"name": "a", "lane": "cheap"}, "lane"),
])
def test_bad_settings_name_the_field(admin: httpx.Client, body: dict[str, Any],
                                     param: str) -> None:
    response = admin.post("/admin/keys", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_limits_change_and_take_effect_at_once(running: Running, admin: httpx.Client) -> None:
    created = create(admin)
    with openai.OpenAI(base_url=running.v1, api_key=created["key"], max_retries=0) as sdk:
        sdk.images.generate(model="test-image", prompt="x")  # cached as it is now
        patched = admin.patch(f"/admin/keys/{created['id']}", json={"rpm": 1})
        assert patched.status_code == 200 and patched.json()["rpm"] == 1
        with pytest.raises(openai.RateLimitError):
            sdk.images.generate(model="test-image", prompt="x")
        admin.patch(f"/admin/keys/{created['id']}", json={"rpm": None})
        sdk.images.generate(model="test-image", prompt="x")


def test_a_keys_lane_decides_where_its_requests_may_go(running: Running,
                                                      admin: httpx.Client) -> None:
    # Issue 22.3: a key may wait for the discount only. The test catalog has no discount
    # lane, so such a key's requests are refused, naming the setting's request twin.
    created = create(admin, lane="discount")
    assert created["lane"] == "discount"
    with openai.OpenAI(base_url=running.v1, api_key=created["key"], max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.images.generate(model="test-image", prompt="x")
        assert caught.value.response.json()["error"]["param"] == "route.lane"
        # The request's own lane speaks first; the key's "discount" is then no matter.
        sdk.images.generate(model="test-image", prompt="x",
                            extra_body={"route": {"lane": "standard"}})
        patched = admin.patch(f"/admin/keys/{created['id']}", json={"lane": None})
        assert patched.status_code == 200 and patched.json()["lane"] is None
        sdk.images.generate(model="test-image", prompt="x")


def test_revoke_and_rotate_take_effect_on_the_next_request(running: Running,
                                                           admin: httpx.Client) -> None:
    first, second = create(admin), create(admin, name="other")
    rotated = admin.post(f"/admin/keys/{first['id']}/rotate").json()
    assert rotated["id"] == first["id"] and rotated["key"] != first["key"]
    with openai.OpenAI(base_url=running.v1, api_key=first["key"], max_retries=0) as old, \
            pytest.raises(openai.AuthenticationError):
        old.models.list()
    with openai.OpenAI(base_url=running.v1, api_key=rotated["key"], max_retries=0) as new:
        new.models.list()
    with openai.OpenAI(base_url=running.v1, api_key=second["key"], max_retries=0) as sdk:
        sdk.models.list()
        assert admin.delete(f"/admin/keys/{second['id']}").json()["revoked"] is True
        with pytest.raises(openai.AuthenticationError):
            sdk.models.list()
    assert admin.post(f"/admin/keys/{second['id']}/rotate").status_code == 409
    assert admin.get("/admin/keys/key_nope").status_code == 404


def test_usage_is_per_key_for_tenants_and_any_key_for_admins(running: Running,
                                                              admin: httpx.Client) -> None:
    a, b = create(admin, name="a"), create(admin, name="b")
    for key, n in ((a["key"], 2), (b["key"], 1)):
        with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
            sdk.images.generate(model="test-image", prompt="x", n=n)
    own = httpx.get(f"{running.v1}/usage", params={"group_by": "model"},
                    headers={"authorization": f"Bearer {a['key']}"}).json()
    assert own["data"] == [{"model": "test-image", "requests": 1, "succeeded": 1, "images": 2,
                            "billed_usd": "0.04", "upstream_usd": "0.04",
                            # served on the reference route itself: nothing saved
                            "reference_usd": "0.04", "saved_usd": "0"}]
    refused = httpx.get(f"{running.v1}/usage", params={"group_by": "key"},
                        headers={"authorization": f"Bearer {a['key']}"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "group_by"
    by_key = admin.get("/admin/usage", params={"group_by": "key"}).json()["data"]
    assert {row["key"]: row["images"] for row in by_key} == {a["id"]: 2, b["id"]: 1}
    one = admin.get("/admin/usage", params={"group_by": "day", "key": b["id"]}).json()["data"]
    assert [row["images"] for row in one] == [1]
    bad = admin.get("/admin/usage", params={"from": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "from"
