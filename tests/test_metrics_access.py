"""Who may read /metrics (every key's money is in it): the metrics token or the admin key; with
no token set, also a loopback client sending no credentials; never a tenant key. /healthz and
/readyz stay open to orchestrators and tell nothing secret.

A client elsewhere is one that reaches Switchyard through a reverse proxy on this machine: its
X-Forwarded-For address is the one uvicorn gives the app (it trusts 127.0.0.1 to say so).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.api import metrics
from tests.conftest import Running, make_config, serve

ADMIN = "adm-4b1d9e0c-metrics-test"
TOKEN = "mtk-71c2a5f8e9d04b3a"
ELSEWHERE = {"x-forwarded-for": "203.0.113.7"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """No metrics token: the zero-config laptop case (with an admin key)."""
    config = make_config(tmp_path_factory.mktemp("open"), admin_key=ADMIN)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = make_config(tmp_path_factory.mktemp("token"), admin_key=ADMIN, metrics_token=TOKEN)
    with serve(config) as running:
        yield running


def scrape(server: Running, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{server.base_url}/metrics", headers=headers)


def refused(answer: httpx.Response, code: str, *never: str) -> None:
    """A 401 in OpenAI's error shape with a Bearer challenge, echoing nothing it was sent."""
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == 'Bearer realm="metrics"'
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, None)
    for secret in never:
        assert secret not in answer.text
    assert "switchyard_" not in answer.text


def test_without_a_token_loopback_scrapes_and_clients_elsewhere_do_not(
        open_server: Running) -> None:
    answer = scrape(open_server)
    assert answer.status_code == 200 and "switchyard_" in answer.text
    answer = scrape(open_server, ELSEWHERE)
    refused(answer, "missing_metrics_token")
    assert "SWITCHYARD_METRICS_TOKEN" in answer.json()["error"]["message"]
    assert scrape(open_server, {**ELSEWHERE, **bearer(ADMIN)}).status_code == 200


def test_a_tenant_key_never_reads_metrics(open_server: Running, token_server: Running) -> None:
    for server in (open_server, token_server):
        key = server.new_key("tenant")
        assert httpx.get(f"{server.v1}/models", headers=bearer(key)).status_code == 200
        refused(scrape(server, bearer(key)), "invalid_metrics_token", key)  # loopback too
        refused(scrape(server, {**ELSEWHERE, **bearer(key)}), "invalid_metrics_token", key)


def test_with_a_token_only_its_bearer_or_the_admin_scrapes(token_server: Running) -> None:
    refused(scrape(token_server), "missing_metrics_token")  # loopback needs it too now
    refused(scrape(token_server, ELSEWHERE), "missing_metrics_token")
    for wrong in (TOKEN[:-1] + "x", TOKEN + "x", TOKEN[:8], ADMIN[:-1]):
        refused(scrape(token_server, bearer(wrong)), "invalid_metrics_token", wrong)
    for header in (f"Basic {TOKEN}", "Bearer", TOKEN):
        refused(scrape(token_server, {"authorization": header}), "invalid_metrics_token", TOKEN)
    for good in (TOKEN, ADMIN):
        for where in ({}, ELSEWHERE):
            answer = scrape(token_server, {**where, **bearer(good)})
            assert answer.status_code == 200 and "switchyard_" in answer.text
    # The scheme's case is the client's choice (RFC 9110).
    assert scrape(token_server, {"authorization": f"bearer {TOKEN}"}).status_code == 200


def test_health_and_readiness_stay_open_and_tell_nothing_secret(
        token_server: Running) -> None:
    key = token_server.new_key("tenant")
    assert httpx.get(f"{token_server.base_url}/healthz", headers=ELSEWHERE).json() == {
        "status": "ok"}
    ready = httpx.get(f"{token_server.base_url}/readyz", headers=ELSEWHERE)
    assert ready.status_code == 200
    body = ready.json()
    assert set(body) == {"status", "problems", "models", "demo", "fleet"}
    assert body["fleet"] == {"mode": "single"} and body["problems"] == []
    for secret in (ADMIN, TOKEN, key, str(token_server.config.data_dir), "usd", "key_"):
        assert secret not in ready.text


def test_the_startup_log_line_says_who_may_scrape(tmp_path: Path) -> None:
    assert "loopback" in metrics.describe(make_config(tmp_path))
    assert "token" in metrics.describe(make_config(tmp_path, metrics_token=TOKEN))
    assert TOKEN not in metrics.describe(make_config(tmp_path, metrics_token=TOKEN))
