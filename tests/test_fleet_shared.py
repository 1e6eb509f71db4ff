"""A fleet on one PostgreSQL database and no Redis: three real `switchyard serve` processes,
each with a data directory of its own, behave as one server for what they share through the
database: an image link minted by one downloads from every other, and job webhooks are
POSTed once each fleet-wide, all signed with the key's one secret whichever replica sends.

The database is the test's own (created and dropped here); without a reachable PostgreSQL the
test skips with the reason, except in CI.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from proxy.billing.keys import digest
from proxy.billing.store import Store
from proxy.providers import webhooks
from tests.databases import own_database
from tests.receivers import Receiver
from tests.serving import Served

REPLICAS = 3
JOBS = 20
RECEIVER_DELAY_S = 0.3  # a receiver that takes its time widens any window for a second POST


@pytest.fixture(scope="module")
def fleet_database() -> Iterator[str]:
    with own_database("switchyard_fleet") as url:
        yield url


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory,
          fleet_database: str) -> Iterator[list[Served]]:
    """Three replicas on the one fresh database, started together: they race to make the
    schema and the fleet's secrets."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    # The webhook receiver listens on loopback: the operator's allow-list opens it on purpose.
    replicas = [Served(tmp_path / f"replica-{i}", env={
                    "SWITCHYARD_DATABASE_URL": fleet_database,
                    "SWITCHYARD_CALLBACK_ALLOW_CIDRS": "127.0.0.0/8"})
                for i in range(REPLICAS)]
    with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor() as pool:
        list(pool.map(stack.enter_context, replicas))
        yield replicas


def _key(database: str) -> str:
    with Store(database) as store:
        return store.create_key("fleet")[1]


def _webhook_secret(database: str, key: str) -> str:
    with Store(database) as store:
        found = store.find_key(digest(key))
        assert found is not None
        secrets = store.webhook_secrets.of_key(found[1].id)
    assert secrets is not None and secrets.current is not None
    return secrets.current


def test_a_link_minted_by_one_replica_downloads_from_every_other(
        fleet: list[Served], fleet_database: str) -> None:
    key = _key(fleet_database)
    made = httpx.post(f"{fleet[0].base}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "test-image", "prompt": "x", "response_format": "url"})
    assert made.status_code == 200, made.text
    link = urlsplit(made.json()["data"][0]["url"])
    assert link.netloc == urlsplit(fleet[0].base).netloc
    got = [httpx.get(f"{replica.base}{link.path}?{link.query}") for replica in fleet]
    assert [answer.status_code for answer in got] == [200] * REPLICAS
    assert got[0].content[:8] == b"\x89PNG\r\n\x1a\n"
    assert {answer.content for answer in got} == {got[0].content}
    assert {answer.headers["content-type"] for answer in got} == {"image/png"}
    last = "1" if link.query.endswith("0") else "0"  # a signature that really differs
    forged = httpx.get(f"{fleet[1].base}{link.path}?{link.query[:-1]}{last}")
    assert forged.status_code == 404


def test_twenty_jobs_across_the_fleet_give_exactly_twenty_signed_posts(
        fleet: list[Served], fleet_database: str) -> None:
    key, receiver = _key(fleet_database), Receiver(RECEIVER_DELAY_S)
    try:
        jobs = [httpx.post(f"{fleet[i % REPLICAS].base}/v1/images/generations",
                           headers={"authorization": f"Bearer {key}",
                                    "prefer": "respond-async"},
                           json={"model": "test-image", "prompt": f"job {i}",
                                 "callback_url": receiver.url}).json()["id"]
                for i in range(JOBS)]
        with Store(fleet_database) as store:
            _wait_all_delivered(store, jobs)
        time.sleep(2.5)  # two more webhook rounds on every replica: no second POST comes
    finally:
        receiver.stop()
    posts = len(receiver.seen)
    assert posts == JOBS, f"{posts} POSTs for {JOBS} jobs"
    assert sorted(receiver.ids()) == sorted(jobs)
    with Store(fleet_database) as store:
        stored = store.db.query("SELECT value FROM shared_secrets "
                                "WHERE name = 'webhook-signing'")
    # The fleet's secret (for keys from before keys had their own) is made once, too.
    assert len(stored) == 1, "the fleet's webhook secret is not in the database"
    whsec = _webhook_secret(fleet_database, key)  # the key's own, in the shared database
    assert all(webhooks.verify(headers, body, whsec, time.time())
               for headers, body in receiver.seen)
    assert {orjson.loads(body)["type"] for _, body in receiver.seen} == {"image.job.succeeded"}


def _wait_all_delivered(store: Store, jobs: list[str], within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    marks = ", ".join("?" * len(jobs))
    while time.monotonic() < deadline:
        states = store.db.query(f"SELECT webhook_state, COUNT(*) FROM jobs WHERE id IN ({marks}) "
                                f"GROUP BY webhook_state", jobs)
        if dict(states).get("delivered") == len(jobs):
            return
        time.sleep(0.1)
    raise AssertionError(f"webhooks not all delivered: {states}")
