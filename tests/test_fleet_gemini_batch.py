"""Gemini Batch groups are created once across a fleet (issue 17, point 5): three real
`switchyard serve` processes on one PostgreSQL database of their own run a Batch API batch
whose items go to the Gemini Batch API (a fake on a real socket). Every item rides exactly one
upstream batch create, is delivered once and billed once; and the items of a replica killed
with -9 after Google accepted its create, but before its reply came back, rejoin that batch
when another replica takes them up instead of going up, and being paid for, a second time.

Each replica runs at most CAP items at once, so the items spread over all three. Without a
reachable PostgreSQL the tests skip with the reason, except in CI.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from proxy.billing.store import Store
from tests import protocol_kit as kit
from tests.databases import own_database
from tests.fakes.gemini_batch_host import KEY, GeminiBatchHost, gemini_batch_host
from tests.serving import Served
from tests.test_batches import ENDPOINT, finished, jsonl, lines_of

REPLICAS = 3
ITEMS = 20
CAP = 7  # items one replica runs at once: 20 items need all three replicas

PROVIDERS = """
[google-batch]
protocol = "gemini_batch"
base_url = "{base_url}"
key_env = "GEMINI_API_KEY"
deferred = true
timeout_s = 30
max_in_flight = {cap}
options = {{ poll_s = 0.2, gather_s = 0.5 }}
"""
ROUTES = """
[[routes]]
provider = "google-batch"
upstream_model = "gemini-3.1-flash-image"
typical_latency_s = 60
price.per_token = { usd_per_million = 30, tokens = { "1K" = 1120 } }
"""


class Fleet:
    def __init__(self, replicas: list[Served], database: str, host: GeminiBatchHost) -> None:
        self.replicas = replicas
        self.database = database
        self.host = host

    def sdk(self, replica: int) -> openai.OpenAI:
        with Store(self.database) as store:
            key = store.create_key("fleet-batch")[1]
        return openai.OpenAI(base_url=f"{self.replicas[replica].base}/v1", api_key=key,
                             max_retries=0, timeout=30)

    def items(self, batch_id: str) -> list[str]:
        with Store(self.database) as store:
            rows = store.db.query("SELECT id FROM jobs WHERE batch_id = ?", (batch_id,))
        return sorted(row[0] for row in rows)

    def ledger(self, jobs: list[str]) -> Counter[tuple[str, str]]:
        """(request id, outcome) of the items' ledger rows, counted."""
        marks = ", ".join("?" * len(jobs))
        with Store(self.database) as store:
            rows = store.db.query(f"SELECT request_id, outcome FROM ledger "
                                  f"WHERE request_id IN ({marks})", jobs)
        return Counter((row[0], row[1]) for row in rows)


@contextlib.contextmanager
def started(tmp_path: Path) -> Iterator[Fleet]:
    with gemini_batch_host() as host, own_database("switchyard_fleet_batch") as database:
        kit.write_catalog(tmp_path / "routes",
                          PROVIDERS.format(base_url=host.base_url, cap=CAP),
                          {"nano-banana-2": kit.nano_banana_2(ROUTES)}, {"GEMINI_API_KEY": KEY})
        env = {"SWITCHYARD_DATABASE_URL": database, "GEMINI_API_KEY": KEY,
               "SWITCHYARD_ROUTES_DIR": str(tmp_path / "routes")}
        served = [Served(tmp_path / f"replica-{i}", env=env) for i in range(REPLICAS)]
        with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(stack.enter_context, served))
            yield Fleet(served, database, host)
        # The fleet shared PostgreSQL: no replica fell back to a SQLite file of its own.
        local = [str(p) for r in served for p in r.data_dir.glob("*.db")]
        assert not local, f"replicas wrote SQLite billing files: {local}"


def submit(sdk: openai.OpenAI) -> str:
    content = jsonl([{"model": "nano-banana-2", "prompt": f"sku {i}", "size": "1024x1024"}
                     for i in range(ITEMS)])
    uploaded = sdk.files.create(file=("in.jsonl", content), purpose="batch")
    return sdk.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                              completion_window="24h").id


def check_once(fleet: Fleet, sdk: openai.OpenAI, batch_id: str) -> None:
    """Every item in exactly one upstream create, no create repeated, every item delivered
    once and billed once."""
    done = finished(sdk, batch_id, within_s=30)
    jobs = fleet.items(batch_id)
    assert len(jobs) == ITEMS
    sent = Counter(fleet.host.members())
    assert {job: n for job, n in sent.items() if n != 1} == {}, "items sent in two creates"
    assert sorted(sent) == jobs
    names = [create.name for create in fleet.host.creates]
    assert len(names) == len(set(names)) == fleet.host.fake.creates
    output, errors = lines_of(sdk, done.output_file_id), lines_of(sdk, done.error_file_id)
    assert not errors
    assert sorted(line["custom_id"] for line in output) == sorted(f"item-{i}" for i in range(ITEMS))
    assert {line["response"]["status_code"] for line in output} == {200}
    assert fleet.ledger(jobs) == Counter({(job, "success"): 1 for job in jobs})


def test_twenty_items_over_three_replicas_each_ride_one_batch_create(tmp_path: Path) -> None:
    with started(tmp_path) as fleet, fleet.sdk(1) as sdk:
        check_once(fleet, sdk, submit(sdk))
        assert len(fleet.host.creates) >= REPLICAS, "the items spread over the replicas"


def test_items_of_a_replica_killed_before_its_create_replied_rejoin_that_batch(
        tmp_path: Path) -> None:
    with started(tmp_path) as fleet, fleet.sdk(1) as sdk:
        host = fleet.host
        host.hold_replies = True  # accepted upstream, the replies not back yet
        batch_id = submit(sdk)
        _until(lambda: len(host.members()) == ITEMS, "every item in a held create")
        fleet.replicas[0].stop(signal.SIGKILL)
        _until(lambda: any(c.orphaned for c in host.creates), "the killed replica's create "
               "orphaned")
        orphans = [job for c in host.creates if c.orphaned for job in c.members]
        host.release()
        # The killed replica's leases run out (now, rather than in request_timeout_s + 60 s).
        marks = ", ".join("?" * len(orphans))
        with Store(fleet.database) as store:
            store.db.execute(f"UPDATE jobs SET lease_until = 0 WHERE state = 'processing' "
                             f"AND id IN ({marks})", orphans)
        check_once(fleet, sdk, batch_id)
        (orphaned,) = [c for c in host.creates if c.orphaned]
        assert host.fake.batches[orphaned.name].state == "SUCCEEDED", "polled to its end"
        with Store(fleet.database) as store:
            refs = store.db.query(f"SELECT DISTINCT upstream_ref FROM jobs WHERE id IN "
                                  f"({marks})", orphans)
        assert refs == [(orphaned.name,)], "the orphans found the batch they were sent in"


def _until(condition: Callable[[], bool], what: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for: {what}")
