"""Asynchronous requests and batches honour Idempotency-Key as synchronous ones do (issue
18.4), through a real `switchyard serve` and the official SDK: retries with one key get the
one job (or batch) the first request made, one upstream call, billed once; the same key on a
different request is a 400 naming the header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from proxy.billing.store import Store
from tests.fakes.slow_hosts import KEY_ENV, SYNC_PRICE, SlowHosts, catalog_files, running
from tests.serving import Served

ASYNC = {"Prefer": "respond-async"}
BODY: dict[str, Any] = {"model": "slow-sync", "prompt": "p", "size": "1024x1024"}
PRICE_MICROS = int(float(SYNC_PRICE) * 1_000_000)


class Setup:
    def __init__(self, served: Served, hosts: SlowHosts) -> None:
        self.served, self.hosts = served, hosts
        self.database = served.data_dir / "switchyard.db"

    def new_key(self) -> tuple[str, str]:
        with Store(self.database) as store:
            record, key = store.create_key("idem")
        return record.id, key

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.served.base}/v1", api_key=key, max_retries=0)

    def ledger(self, key_id: str) -> list[tuple[str, int]]:
        with Store(self.database) as store:
            rows = store.db.query("SELECT request_id, billed_micros FROM ledger "
                                  "WHERE key_id = ?", (key_id,))
        return [(str(r[0]), int(r[1])) for r in rows]

    def jobs(self, key_id: str) -> int:
        with Store(self.database) as store:
            return int(store.db.query("SELECT COUNT(*) FROM jobs WHERE key_id = ?",
                                      (key_id,))[0][0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp_path = tmp_path_factory.mktemp("idem")
    with running(SlowHosts(sync_s=1.0)) as hosts:
        routes = tmp_path / "routes"
        for name, text in catalog_files(hosts).items():
            (routes / name).parent.mkdir(parents=True, exist_ok=True)
            (routes / name).write_text(text)
        with Served(tmp_path / "data", env={"SWITCHYARD_ROUTES_DIR": str(routes),
                                            KEY_ENV: "k"}) as served:
            yield Setup(served, hosts)


def _finished(sdk: openai.OpenAI, job_id: str, within_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = sdk.get(f"/images/jobs/{job_id}", cast_to=object)  # type: ignore[assignment]
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_three_async_retries_with_one_key_make_one_job_one_call_one_charge(
        setup: Setup) -> None:
    key_id, key = setup.new_key()
    headers = {**ASYNC, "Idempotency-Key": "render-42"}
    calls_before = setup.hosts.sync_calls
    with setup.sdk(key) as sdk:
        raws = [sdk.images.with_raw_response.generate(**BODY, extra_headers=headers)
                for _ in range(3)]
        jobs = [raw.http_response.json() for raw in raws]
        done = _finished(sdk, jobs[0]["id"])
        after = sdk.images.with_raw_response.generate(**BODY, extra_headers=headers)
        with pytest.raises(openai.BadRequestError) as other_body:
            sdk.images.generate(**{**BODY, "prompt": "q"}, extra_headers=headers)
        with pytest.raises(openai.BadRequestError) as made_sync:
            sdk.images.generate(**BODY, extra_headers={"Idempotency-Key": "render-42"})
    assert [raw.http_response.status_code for raw in raws] == [202, 202, 202]
    assert len({job["id"] for job in jobs}) == 1
    assert "idempotent-replayed" not in raws[0].headers
    assert [raw.headers.get("idempotent-replayed") for raw in raws[1:]] == ["true", "true"]
    assert raws[2].headers["location"] == f"/v1/images/jobs/{jobs[0]['id']}"
    # A retry after the job finished: the same job, with its result (200: nothing is queued).
    assert after.http_response.status_code == 200
    assert after.http_response.json() == done and done["status"] == "succeeded"
    for refused in (other_body.value, made_sync.value):
        error = refused.response.json()["error"]
        assert (error["code"], error["param"]) == ("idempotency_key_reused", "idempotency-key")
    assert setup.jobs(key_id) == 1
    assert setup.hosts.sync_calls - calls_before == 1
    assert setup.ledger(key_id) == [(jobs[0]["id"], PRICE_MICROS)]


def test_concurrent_async_duplicates_make_one_job(setup: Setup) -> None:
    key_id, key = setup.new_key()
    headers = {**ASYNC, "Idempotency-Key": "burst"}

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{setup.served.base}/v1", api_key=key,
                                      max_retries=0) as sdk:
            return list(await asyncio.gather(*(sdk.images.with_raw_response.generate(
                **BODY, extra_headers=headers) for _ in range(8))))

    raws = asyncio.run(burst())
    ids = {raw.http_response.json()["id"] for raw in raws}
    with setup.sdk(key) as sdk:
        assert _finished(sdk, next(iter(ids)))["status"] == "succeeded"
    assert len(ids) == 1
    assert sum("idempotent-replayed" not in raw.headers for raw in raws) == 1
    assert setup.jobs(key_id) == 1 and len(setup.ledger(key_id)) == 1


def test_a_batch_retried_with_one_key_is_created_once(setup: Setup) -> None:
    key_id, key = setup.new_key()
    lines = b"".join(orjson.dumps({"custom_id": f"c{i}", "method": "POST",
                                   "url": "/v1/images/generations", "body": BODY}) + b"\n"
                     for i in range(3))
    headers = {"Idempotency-Key": "nightly-7"}
    with setup.sdk(key) as sdk:
        upload = sdk.files.create(file=("in.jsonl", lines), purpose="batch")
        other = sdk.files.create(file=("other.jsonl", lines), purpose="batch")
        made = [sdk.batches.with_raw_response.create(
            input_file_id=upload.id, endpoint="/v1/images/generations",
            completion_window="24h", extra_headers=headers) for _ in range(3)]
        with pytest.raises(openai.BadRequestError) as reused:
            sdk.batches.create(input_file_id=other.id, endpoint="/v1/images/generations",
                               completion_window="24h", extra_headers=headers)
        listed = sdk.batches.list().data
        _until(lambda: sdk.batches.retrieve(listed[0].id).status == "completed")
    batches = [raw.parse() for raw in made]
    assert len({batch.id for batch in batches}) == 1 and [b.id for b in listed] == [batches[0].id]
    assert [raw.headers.get("idempotent-replayed") for raw in made] == [None, "true", "true"]
    assert reused.value.response.json()["error"]["param"] == "idempotency-key"
    assert setup.jobs(key_id) == 3  # one batch's items, not three batches'


def _until(condition: Callable[[], bool], within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
