"""Issue 18 (1-3) in a real `switchyard serve`: no tenant's callback_url can break, slow or aim
the webhook sender at another's expense. A poison or private URL is a 400 naming
`callback_url`; a stored one (from before this check) fails alone, without a connection,
while another tenant's webhook arrives and its batch finishes; one tenant's hanging receivers
hold only its own few turns.

Only 127.0.0.2 is opened by the operator's allow-list here: the good receivers listen there,
and everything aimed at 127.0.0.1 or `localhost` stands for an internal target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxy.api.job_webhooks import PER_KEY_SENDING
from proxy.billing.store import Store
from tests.receivers import Hanging, Receiver
from tests.serving import Served

OPENED = "127.0.0.2"
ENV = {"SWITCHYARD_CALLBACK_ALLOW_CIDRS": f"{OPENED}/32"}
BODY = {"model": "test-image", "prompt": "x"}
TOKEN = "s3cr3t-hook-token"
SUBMIT_PROBES = [
    "https://localhost/\x7fhook", "https://localhost/\thook", "https://localhost/\x00hook",
    "https://localhost/\x01hook", "https://[::1/", "https://127.0.0.1", "https://2130706433",
    "https://0x7f000001", "https://127.1", "https://[::ffff:127.0.0.1]", "https://0177.0.0.1/",
    "https://127.0.0.1./", "https://[::1]/", "https://10.0.0.1/", "https://169.254.169.254/",
    "https://224.0.0.1/", "https://[64:ff9b::7f00:1]/", "https://[2002:7f00:1::]/",
    "https://localhost/", "https://hooks.localhost/", "https://user:pw@example.com/",
    "https://example.com:0/", "https://example.com:65536/", "https://example.com\\@127.0.0.1/",
    "ftp://example.com/", "http://127.0.0.1:9/hooks", "http://[::1]:9/hooks", 42, "",
]


def _until(check: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _submit(served: Served, key: str, hook: Any) -> httpx.Response:
    return httpx.post(f"{served.base}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}", "prefer": "respond-async"},
                      json={**BODY, "callback_url": hook})


def _batch(served: Served, key: str) -> str:
    auth = {"authorization": f"Bearer {key}"}
    lines = [orjson.dumps({"custom_id": f"c{i}", "method": "POST",
                           "url": "/v1/images/generations", "body": BODY}) for i in range(2)]
    uploaded = httpx.post(f"{served.base}/v1/files", headers=auth, data={"purpose": "batch"},
                          files={"file": ("in.jsonl", b"\n".join(lines))}).json()
    batch = httpx.post(f"{served.base}/v1/batches", headers=auth, json={
        "input_file_id": uploaded["id"], "endpoint": "/v1/images/generations",
        "completion_window": "24h"}).json()
    return str(batch["id"])


def _batch_done(served: Served, key: str, batch_id: str) -> bool:
    got = httpx.get(f"{served.base}/v1/batches/{batch_id}",
                    headers={"authorization": f"Bearer {key}"}).json()
    return bool(got["status"] == "completed")


@pytest.fixture
def good() -> Iterator[Receiver]:
    found = Receiver(host=OPENED)
    yield found
    found.stop()


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    found = Hanging(OPENED)
    yield found
    found.stop()


def _key(data_dir: Path, name: str) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    with Store(data_dir / "switchyard.db") as store:
        return store.create_key(name)[1]


def test_poison_and_internal_callback_urls_are_refused_at_submit(tmp_path: Path,
                                                                  good: Receiver) -> None:
    data = tmp_path / "data"
    key = _key(data, "probe")
    with Served(data, env=ENV) as served:
        for probe in SUBMIT_PROBES:
            answer = _submit(served, key, probe)
            assert answer.status_code == 400, (probe, answer.text)
            error = answer.json()["error"]
            assert (error["param"], error["type"]) == ("callback_url", "invalid_request_error")
            assert error["message"].startswith("'callback_url' ")
        opened = _submit(served, key, good.url)  # the operator's network, opened on purpose
        assert opened.status_code == 202, opened.text
        assert _until(lambda: len(good.seen) == 1, 10)
        log = served.log()
    with Store(data / "switchyard.db") as store:
        assert store.db.query("SELECT COUNT(*) FROM jobs")[0][0] == 1
    assert "Traceback" not in log


def _stored_poison(data_dir: Path, hooks: list[str]) -> list[str]:
    """Finished jobs whose webhooks are due, with URLs stored before they were checked."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with Store(data_dir / "switchyard.db") as store:
        key = store.create_key("poison")[0].id
        ids = [store.jobs.enqueue(key, "generations", orjson.dumps(BODY), callback_url=hook).id
               for hook in hooks]
        while claimed := store.jobs.claim_many(60, 50):
            for job in claimed:
                store.jobs.finish(job.id, 200, b"{}")
    return ids


def test_a_stored_poison_webhook_fails_alone_without_a_connection(
        tmp_path: Path, good: Receiver) -> None:
    """A sender that raised on one URL used to leave it claimed, sent again after each lease,
    forever; a private target was connected to. Now each is refused at connect time, given
    up after one attempt, and another tenant's webhook and batch go on."""
    internal = Receiver()  # on 127.0.0.1: `localhost` resolves there, which is not opened
    hanging = Hanging()  # on 127.0.0.1 too: counts every connection made to it
    data = tmp_path / "data"
    try:
        poison = _stored_poison(data, [
            f"https://localhost/\x7fhook?sig={TOKEN}", "https://[::1/", "https://a/\thook",
            f"http://localhost:{internal.server.server_address[1]}/hooks",
            f"https://127.0.0.1:{hanging.port}/hooks", f"https://2130706433:{hanging.port}/"])
        key = _key(data, "other")
        with Served(data, env=ENV) as served:
            job = _submit(served, key, good.url)
            assert job.status_code == 202, job.text
            assert _until(lambda: good.ids() == [job.json()["id"]], 10), "no webhook arrived"
            batch_id = _batch(served, key)
            assert _until(lambda: _batch_done(served, key, batch_id), 10), "batch not finished"
            with Store(data / "switchyard.db") as store:
                marks = ", ".join("?" * len(poison))
                states = store.db.query(f"SELECT webhook_state, webhook_attempts FROM jobs "
                                        f"WHERE id IN ({marks})", poison)
            log = served.log()
    finally:
        internal.stop()
        hanging.stop()
    assert states == [("gave_up", 1)] * len(poison)
    assert internal.seen == [] and hanging.accepted == 0
    assert TOKEN not in log and "localhost" not in log


def test_one_tenants_hanging_receivers_delay_no_one_else(tmp_path: Path, good: Receiver,
                                                          hanging: Hanging) -> None:
    data = tmp_path / "data"
    slow, other = _key(data, "slow"), _key(data, "other")
    with Served(data, env=ENV) as served:
        for i in range(12):
            hook = f"http://{OPENED}:{hanging.port}/hooks/{i}"
            assert _submit(served, slow, hook).status_code == 202
        assert _until(lambda: hanging.accepted > 0, 10), "no webhook went to the receivers"
        started = time.monotonic()
        job = _submit(served, other, good.url).json()
        batch_id = _batch(served, other)
        assert _until(lambda: good.ids() == [job["id"]], 5), "the other tenant's webhook waited"
        assert _until(lambda: _batch_done(served, other, batch_id), 5), "the batch waited"
        took = time.monotonic() - started
        time.sleep(1.5)  # more rounds of claims: the slow tenant still holds only its own turns
        assert hanging.accepted == PER_KEY_SENDING
    assert took < 5
