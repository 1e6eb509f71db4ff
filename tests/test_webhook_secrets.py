"""Each tenant key signs its job webhooks with a secret of its own (issue 18.8): made with the
key and shown once (CLI and admin API), rotatable through both, kept signing beside the new
one for a grace period if asked, and never in a log. Receivers verify with the
`standardwebhooks` package and only their own tenant's secret.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from proxy.api.job_webhooks import Signer
from proxy.billing.store import Store
from proxy.billing.webhook_secrets import KeySecrets
from tests.receivers import Receiver
from tests.serving import Served

FLEET = "whsec_" + base64.b64encode(b"f" * 32).decode()
ADMIN = "admin-key-for-webhook-secret-tests"


def test_each_key_has_its_own_secret_and_a_rotation_keeps_the_old_one_its_grace(
        database: str) -> None:
    with Store(database) as store:
        (a, _), (b, _) = store.create_key("a"), store.create_key("b")
        table = store.webhook_secrets
        first, other = table.of_key(a.id), table.of_key(b.id)
        assert first is not None and other is not None and first.current is not None
        assert len(base64.b64decode(first.current.removeprefix("whsec_"))) == 32
        assert first.current != other.current
        now = time.time()
        rotated = table.rotate(a.id, 3600, now=now)
        assert rotated is not None and rotated[1] == int(now + 3600)
        after = table.of_key(a.id)
        assert after is not None
        assert after.signing(FLEET, now + 10) == [rotated[0], first.current]
        assert after.signing(FLEET, now + 3601) == [rotated[0]]
        again = table.rotate(a.id, 0)
        assert again is not None and again[1] is None
        assert Signer(FLEET, table).secrets(a.id) == [again[0]]
        assert store.revoke_key(b.id) and table.rotate(b.id) is None
        assert first.current not in repr(first) and first.current not in repr(after)


def test_a_key_from_before_signs_with_the_fleet_secret_until_it_is_rotated(
        database: str) -> None:
    with Store(database) as store:
        record, _ = store.create_key("old")
        store.db.execute("UPDATE api_keys SET webhook_secret = NULL WHERE id = ?", (record.id,))
        signer = Signer(FLEET, store.webhook_secrets)
        assert signer.secrets(record.id) == [FLEET]
        rotated = store.webhook_secrets.rotate(record.id, 3600)
        assert rotated is not None
        assert signer.secrets(record.id) == [rotated[0], FLEET]  # its receivers move over
    assert KeySecrets(None).signing(FLEET, time.time()) == [FLEET]


# Through a real server: the admin API, the CLI, and receivers that verify as tenants would.

@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    # The receiver listens on loopback: the operator's allow-list opens it on purpose.
    with Served(tmp_path / "data", env={"SWITCHYARD_ADMIN_KEY": ADMIN,
                                        "SWITCHYARD_CALLBACK_ALLOW_CIDRS": "127.0.0.0/8"}) as s:
        yield s


def _delivered(served: Served, key: str, receiver: Receiver) -> tuple[dict[str, str], bytes]:
    """An async job of `key`'s with a callback_url: its webhook as the receiver got it."""
    with openai.OpenAI(base_url=f"{served.base}/v1", api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(
            model="test-image", prompt="x", extra_headers={"Prefer": "respond-async"},
            extra_body={"callback_url": receiver.url})
    job_id = raw.http_response.json()["id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for headers, body in list(receiver.seen):
            if headers.get("webhook-id") == job_id:
                return headers, body
        time.sleep(0.05)
    raise AssertionError(f"no webhook for {job_id}:\n{served.log()}")


def _verifies(secret: str, delivery: tuple[dict[str, str], bytes]) -> bool:
    headers, body = delivery
    try:
        event: Any = Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return bool(event["data"]["id"] == headers["webhook-id"])


def _cli(served: Served, *argv: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "proxy", *argv], env=served.env, check=True,
                          capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines()


def test_two_tenants_webhooks_verify_only_with_their_own_secret(
        served: Served, receiver: Receiver) -> None:
    with httpx.Client(base_url=served.base,
                      headers={"authorization": f"Bearer {ADMIN}"}) as admin:
        a, b = (admin.post("/admin/keys", json={"name": name}).json() for name in "ab")
        listed = admin.get("/admin/keys").text + admin.get(f"/admin/keys/{a['id']}").text
    lines = _cli(served, "keys", "create", "c")  # the CLI shows it once too, the key last
    c = {"key": lines[-1], "webhook_secret": lines[-2].removeprefix("webhook secret: ")}
    tenants = [a, b, c]
    secrets = [t["webhook_secret"] for t in tenants]
    assert len(set(secrets)) == 3 and all(s.startswith("whsec_") for s in secrets)
    deliveries = [_delivered(served, t["key"], receiver) for t in tenants]
    for mine, delivery in enumerate(deliveries):
        assert [_verifies(secret, delivery) for secret in secrets] == \
            [index == mine for index in range(3)]
    assert not any(secret in listed for secret in secrets)  # shown at creation only
    _never_logged(served, secrets)


def test_a_rotated_secret_signs_the_next_webhooks(served: Served, receiver: Receiver) -> None:
    with httpx.Client(base_url=served.base,
                      headers={"authorization": f"Bearer {ADMIN}"}) as admin:
        a, b = (admin.post("/admin/keys", json={"name": name}).json() for name in "ab")
        bad = admin.post(f"/admin/keys/{a['id']}/rotate-webhook-secret",
                         json={"grace_hours": -1})
        # At once (grace 0) through the admin API; with the default grace through the CLI.
        rotated = admin.post(f"/admin/keys/{a['id']}/rotate-webhook-secret",
                             json={"grace_hours": 0}).json()
    new_b = _cli(served, "keys", "rotate-webhook-secret", b["id"])[-1]
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "grace_hours")
    assert rotated["previous_webhook_secret_until"] is None
    after_a, after_b = (_delivered(served, t["key"], receiver) for t in (a, b))
    assert _verifies(rotated["webhook_secret"], after_a)
    assert not _verifies(a["webhook_secret"], after_a)
    assert _verifies(new_b, after_b) and _verifies(b["webhook_secret"], after_b)  # its grace
    assert len(after_b[0]["webhook-signature"].split()) == 2
    assert not _verifies(new_b, after_a) and not _verifies(rotated["webhook_secret"], after_b)
    _never_logged(served, [a["webhook_secret"], b["webhook_secret"], rotated["webhook_secret"],
                           new_b])


def _never_logged(served: Served, secrets: list[str]) -> None:
    log = served.log()
    assert "webhook attempt" in log or "webhook for job" in log  # the sender did log
    for secret in secrets:
        assert secret.removeprefix("whsec_")[:16] not in log
