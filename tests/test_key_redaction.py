"""A Gemini client may send its tenant key as `?key=`: uvicorn's access log prints paths with
their query, so under a real `switchyard serve` the key must never reach the log."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from proxy.billing.store import Store
from proxy.logs import HideKeys
from tests.serving import Served


def test_the_access_log_prints_no_key_from_a_query(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with Store(data_dir / "switchyard.db") as store:
        key = store.create_key("logs")[1]
    with Served(data_dir, env={"SWITCHYARD_ACCESS_LOG": "1"}) as served:
        listed = httpx.get(f"{served.base}/v1beta/models", params={"key": key, "pageSize": 5})
        drawn = httpx.post(f"{served.base}/v1beta/models/test-image:generateContent",
                           params={"key": key}, timeout=30,
                           json={"contents": [{"parts": [{"text": "a red fox"}]}]})
        wrong = httpx.get(f"{served.base}/v1beta/models?k%65y=sy-not-a-real-key")
        assert (listed.status_code, drawn.status_code, wrong.status_code) == (200, 200, 400)
        assert served.wait_for_log("k%65y=***"), served.log()
    log = served.log()
    assert '"GET /v1beta/models?key=***&pageSize=5 HTTP/1.1" 200' in log
    assert '"POST /v1beta/models/test-image:generateContent?key=*** HTTP/1.1" 200' in log
    assert key not in log and "sy-not-a-real-key" not in log
    assert '"model":"test-image"' in log  # the request log's line, which has no path


@pytest.mark.parametrize(("path", "shown"), [
    ("/v1beta/models?key=sy-1", "/v1beta/models?key=***"),
    ("/v1beta/models?pageSize=2&key=sy-1&pageToken=3",
     "/v1beta/models?pageSize=2&key=***&pageToken=3"),
    ("/v1beta/models?k%65y=sy-1", "/v1beta/models?k%65y=***"),
    ("/v1beta/models?apikey=visible&monkey=x", "/v1beta/models?apikey=visible&monkey=x"),
    ("/v1/models", "/v1/models"),
])
def test_only_the_key_parameter_is_hidden(path: str, shown: str) -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", path, "1.1", 200), None)
    assert HideKeys().filter(record)
    assert record.getMessage() == f'127.0.0.1:5000 - "GET {shown} HTTP/1.1" 200'
