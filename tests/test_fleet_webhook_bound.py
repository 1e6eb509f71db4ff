"""The per-key webhook bound holds for a fleet (issue 18.3): two real `switchyard serve`
processes on one PostgreSQL database, one tenant's receivers hanging, and never more than
PER_KEY_SENDING of its webhooks in flight in all (each process counted only its own: twice
as many went out, and with N replicas N times). Another tenant's webhook still arrives.

The database is the test's own (created and dropped here); without a reachable PostgreSQL the
test skips with the reason, except in CI.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.api.job_webhooks import PER_KEY_SENDING
from proxy.billing.store import Store
from tests.databases import own_database
from tests.receivers import Hanging, Receiver
from tests.serving import Served
from tests.test_webhook_isolation import OPENED, _submit, _until

REPLICAS = 2
HOOKS = 12


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[str, list[Served]]]:
    with own_database("switchyard_hook_bound") as url:
        replicas = [Served(tmp_path / f"replica-{i}", env={
                        "SWITCHYARD_DATABASE_URL": url,
                        "SWITCHYARD_CALLBACK_ALLOW_CIDRS": f"{OPENED}/32"})
                    for i in range(REPLICAS)]
        with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(stack.enter_context, replicas))
            yield url, replicas


def test_one_keys_webhooks_in_flight_stay_bounded_across_replicas(
        fleet: tuple[str, list[Served]]) -> None:
    url, replicas = fleet
    with Store(url) as store:
        slow, other = store.create_key("slow")[1], store.create_key("other")[1]
    hanging, good = Hanging(OPENED), Receiver(host=OPENED)
    try:
        for i in range(HOOKS):
            hook = f"http://{OPENED}:{hanging.port}/hooks/{i}"
            assert _submit(replicas[i % REPLICAS], slow, hook).status_code == 202
        assert _until(lambda: hanging.accepted >= PER_KEY_SENDING, 15), hanging.accepted
        assert _submit(replicas[1], other, good.url).status_code == 202
        assert _until(lambda: len(good.seen) == 1, 10), "the other tenant's webhook waited"
        # Every replica has looked for due webhooks several times meanwhile (once a second),
        # and the hanging attempts are far from their 20 s deadline.
        time.sleep(3.0)
        in_flight = hanging.accepted
        logs = [replica.log() for replica in replicas]
    finally:
        hanging.stop()
        good.stop()
    assert in_flight == PER_KEY_SENDING, (in_flight, [log[-1500:] for log in logs])
    assert all("Traceback" not in log for log in logs)


def test_a_replica_that_stops_hands_its_webhook_leases_back(tmp_path: Path) -> None:
    """A graceful stop cancels the attempts in flight and makes them due again at once: left
    to run out (WEBHOOK_LEASE_S), their leases kept the key's share of the fleet's bound from
    every other replica meanwhile."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with Store(data_dir / "switchyard.db") as store:
        key = store.create_key("slow")[1]
    hanging = Hanging(OPENED)
    try:
        with Served(data_dir, env={"SWITCHYARD_CALLBACK_ALLOW_CIDRS": f"{OPENED}/32"}) as one:
            for i in range(2):
                hook = f"http://{OPENED}:{hanging.port}/hooks/{i}"
                assert _submit(one, key, hook).status_code == 202
            assert _until(lambda: hanging.accepted >= 2, 15), hanging.accepted
            stopped_at = time.time()
            one.stop()
    finally:
        hanging.stop()
    with Store(data_dir / "switchyard.db") as store:
        rows = store.db.query("SELECT webhook_state, webhook_after, webhook_attempts FROM jobs")
    assert len(rows) == 2
    for state, after, attempts in rows:
        assert (state, attempts) == ("due", 0), rows  # was: 'sending' for WEBHOOK_LEASE_S
        assert int(after) <= stopped_at + 5, rows
