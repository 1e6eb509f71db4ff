"""The Batch API through the official SDK: files, batches, live counts, output and error
files; a 1,000-item batch with failures and a server restart in the middle loses nothing,
runs nothing twice and bills each item once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson

from proxy.billing.store import Store
from tests.conftest import make_config, serve

ENDPOINT = "/v1/images/generations"


def jsonl(items: list[dict[str, Any]], extra: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    lines = [orjson.dumps({"custom_id": f"item-{i}", "method": "POST", "url": ENDPOINT,
                           "body": body}) for i, body in enumerate(items)]
    return b"\n".join([*lines, *extra]) + b"\n"


def finished(sdk: openai.OpenAI, batch_id: str, within_s: float = 60) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "cancelled", "failed"):
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish: {batch.request_counts}, "
                         f"status {batch.status}")


def lines_of(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in sdk.files.content(file_id).content.splitlines()]


def test_a_batch_end_to_end_through_the_sdk(tmp_path: Path,
                                            validate: Callable[[str, Any], None]) -> None:
    bad = [b"not json", orjson.dumps({"custom_id": "bad-n", "method": "POST", "url": ENDPOINT,
                                      "body": {"model": "test-image", "prompt": "x", "n": 99}})]
    content = jsonl([{"model": "test-image", "prompt": f"p{i}"} for i in range(5)], bad)
    with serve(make_config(tmp_path / "data")) as running, \
            openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        uploaded = sdk.files.create(file=("in.jsonl", content), purpose="batch")
        validate("OpenAIFile", uploaded.model_dump(exclude_none=True))
        assert uploaded.bytes == len(content)
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                   completion_window="24h", metadata={"job": "catalog"})
        validate("Batch", batch.model_dump(exclude_none=True))
        done = finished(sdk, batch.id)
        validate("Batch", done.model_dump(exclude_none=True))
        assert done.status == "completed" and done.metadata == {"job": "catalog"}
        counts = done.request_counts
        assert counts is not None and (counts.total, counts.completed, counts.failed) == (7, 5, 2)
        output, errors = lines_of(sdk, done.output_file_id), lines_of(sdk, done.error_file_id)
        assert sorted(o["custom_id"] for o in output) == [f"item-{i}" for i in range(5)]
        for line in output:
            assert line["response"]["status_code"] == 200
            validate("ImagesResponse", line["response"]["body"])
        assert sorted(str(e["custom_id"]) for e in errors) == ["None", "bad-n"]
        assert sdk.batches.list().data[0].id == batch.id


def test_cancel_stops_queued_items(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", simulation_time_scale=0.2)
    content = jsonl([{"model": "test-image", "prompt": f"p{i}"} for i in range(60)])
    with serve(config) as running, \
            openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0) as sdk:
        batch = sdk.batches.create(input_file_id=sdk.files.create(
            file=("in.jsonl", content), purpose="batch").id, endpoint=ENDPOINT,
            completion_window="24h")
        cancelling = sdk.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        done = finished(sdk, batch.id)
    assert done.status == "cancelled" and done.request_counts is not None
    assert done.request_counts.completed + done.request_counts.failed == 60
    assert done.request_counts.failed > 0


def test_a_thousand_items_survive_a_restart_each_billed_once(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", simulation_time_scale=0.02)
    # Injected failures: test-failover fails over from a broken route on every item, and
    # every 25th item asks for test-down, whose only host always fails.
    models = ["test-image", "test-failover"]
    content = jsonl([{"model": "test-down" if i % 25 == 24 else models[i % 2],
                      "prompt": f"p{i}"} for i in range(1000)])
    with Store(config.database) as store:
        key = store.create_key("bulk")[1]
    with serve(config) as running, \
            openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        batch = sdk.batches.create(input_file_id=sdk.files.create(
            file=("in.jsonl", content), purpose="batch").id, endpoint=ENDPOINT,
            completion_window="24h")
        time.sleep(1.0)
        midway = sdk.batches.retrieve(batch.id).request_counts
    assert midway is not None and 0 < midway.completed < 1000, "restarted mid-batch"
    with serve(config) as running, \
            openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
        done = finished(sdk, batch.id, within_s=120)
        output, errors = lines_of(sdk, done.output_file_id), lines_of(sdk, done.error_file_id)
    ids = [line["custom_id"] for line in output + errors]
    with Store(config.database) as store:
        billed = store.db.query("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM ledger "
                                "WHERE outcome = 'success'")[0]
    print(f"\nbatch restart audit: items 1000, succeeded {len(output)}, failed {len(errors)}, "
          f"lost {1000 - len(set(ids))}, duplicated {len(ids) - len(set(ids))}, "
          f"billed rows {billed[0]}")
    assert sorted(ids) == sorted(f"item-{i}" for i in range(1000)), "none lost, none twice"
    assert billed[0] == billed[1] == len(output), "each success billed exactly once"
    assert sorted(line["custom_id"] for line in errors) == sorted(
        f"item-{i}" for i in range(24, 1000, 25)), "exactly the doomed items failed"
    for line in errors:  # each with its reason, as the API would have answered it
        assert line["response"]["status_code"] >= 400
        assert line["response"]["body"]["error"]["code"]
