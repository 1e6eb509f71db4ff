"""Logging under a real `switchyard serve` (one process, and --workers 2): a line per request,
and a 500's request id in the log that its body sends operators to."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import httpx
import orjson
import pytest

from proxy.billing.store import Store
from tests.serving import Served


def request_lines(log: str) -> list[dict[str, object]]:
    lines = []
    for line in log.splitlines():
        _, marker, rest = line.partition(" switchyard.requests: ")
        if marker:
            lines.append(orjson.loads(rest))
    return lines


@pytest.mark.parametrize("workers", [1, 2])
def test_request_lines_and_a_500s_request_id_reach_the_log(tmp_path: Path, workers: int) -> None:
    data_dir = tmp_path / "data"
    with Store(data_dir / "switchyard.db") as store:
        key = store.create_key("logs")[1]
    with Served(data_dir, "--workers", str(workers)) as served, \
            httpx.Client(base_url=served.base, headers={"authorization": f"Bearer {key}"},
                         timeout=10) as client:
        ids = []
        for i in range(20):
            response = client.post("/v1/images/generations",
                                   json={"model": "test-image", "prompt": f"p{i}"})
            assert response.status_code == 200
            ids.append(response.headers["x-request-id"])
        # Links need the image directory: a file in its place makes storing fail (a 500).
        images = data_dir / "images"
        shutil.rmtree(images)
        images.write_bytes(b"not a directory")
        failed = client.post("/v1/images/generations", json={
            "model": "test-image", "prompt": "x", "response_format": "url"})
        assert failed.status_code == 500
        assert "log" in failed.json()["error"]["message"]
        failed_id = failed.headers["x-request-id"]
        assert served.wait_for_log(f"(request {failed_id})"), served.log()
        assert served.wait_for_log(ids[-1]), served.log()
        logged = {line["request_id"]: line for line in request_lines(served.log())}
        assert set(ids) <= set(logged)
        assert all(logged[i]["outcome"] == "success" for i in ids)
        assert key not in served.log()
        # The last lines of a graceful stop are written before the process dies of SIGTERM.
        assert served.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in served.log()
