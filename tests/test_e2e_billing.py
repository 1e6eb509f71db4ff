"""Billing end to end through the official SDK, on SQLite and PostgreSQL: budgets that never
overspend under concurrency, rate limits as OpenAI answers them, the ledger, model allowlists,
per-key strategy and idempotent retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.billing.keys import KeyLimits
from tests.conftest import Running, make_config, serve


@pytest.fixture
def running(database: str, tmp_path: Path) -> Iterator[Running]:
    """A server on the test catalog whose billing store is `database` (either engine); the
    simulated hosts take ~50 ms so concurrent requests really overlap."""
    url = database if database.startswith("postgres") else None
    config = make_config(tmp_path / "data", simulation_time_scale=0.05, database_url=url)
    with serve(config) as server:
        yield server


def sdk(server: Running, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0)


def ledger(server: Running) -> list[tuple[Any, ...]]:
    with server.store() as store:
        return store.db.query("SELECT request_id, outcome, n_delivered, billed_micros, "
                              "upstream_micros, provider FROM ledger ORDER BY created_at")


def test_a_budget_of_ten_images_serves_exactly_ten_of_a_hundred(running: Running) -> None:
    # test-image's cheapest route costs $0.02 at 1K: the budget holds exactly ten images.
    key = running.new_key("capped", KeyLimits(budget_usd=Decimal("0.20")))

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=running.v1, api_key=key, max_retries=0) as client:
            return await asyncio.gather(*(
                client.images.with_raw_response.generate(model="test-image", prompt=f"p{i}")
                for i in range(100)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    ok = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert len(ok) == 10 and len(refused) == 90
    assert all(r.response.json()["error"]["code"] == "insufficient_quota" for r in refused)
    rows = ledger(running)
    assert len(rows) == 10 and sum(r[3] for r in rows) == 200_000
    with running.store() as store:
        assert store.money.spent(store.list_keys()[0].id, "total") == (Decimal("0.2"),
                                                                        Decimal(0))


def test_every_image_response_has_its_ledger_row(running: Running,
                                                  validate: Callable[[str, Any], None]) -> None:
    key = running.new_key()
    with sdk(running, key) as client:
        raw = client.images.with_raw_response.generate(model="test-image", prompt="x", n=2)
        validate("ImagesResponse", raw.http_response.json())
        with pytest.raises(openai.APIStatusError):
            client.images.generate(model="test-down", prompt="x")
    assert raw.headers["x-switchyard-billed-usd"] == "0.040000"
    rows = {r[0]: r for r in ledger(running)}
    assert len(rows) == 2
    served = rows[raw.headers["x-request-id"]]
    assert served[1:] == ("success", 2, 40_000, 40_000, "sim-cheap")
    (failed,) = [r for r in rows.values() if r[1] != "success"]
    assert failed[2:5] == (0, 0, 0), "failures are recorded at $0"


def test_rate_limits_answer_like_openai(running: Running) -> None:
    key = running.new_key("limited", KeyLimits(rpm=2, ipm=3))
    with sdk(running, key) as client:
        first = client.images.with_raw_response.generate(model="test-image", prompt="x")
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-remaining-images"] == "2"
        with pytest.raises(openai.RateLimitError) as images:
            client.images.generate(model="test-image", prompt="x", n=3)
        client.images.generate(model="test-image", prompt="x")
        with pytest.raises(openai.RateLimitError) as requests:
            client.images.generate(model="test-image", prompt="x")
    for caught in (images, requests):
        body = caught.value.response.json()["error"]
        assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
        assert int(caught.value.response.headers["retry-after"]) >= 1
    assert "images" in images.value.message and "requests" in requests.value.message
    assert len(ledger(running)) == 2, "refused requests are not billed"


def test_a_key_sees_only_its_allowed_models(running: Running) -> None:
    key = running.new_key("narrow", KeyLimits(allowed_models=("test-image",)))
    with sdk(running, key) as client:
        assert [m.id for m in client.models.list()] == ["test-image"]
        with pytest.raises(openai.NotFoundError):
            client.images.generate(model="test-failover", prompt="x")
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("test-failover")
        client.images.generate(model="ti", prompt="x")  # an alias of an allowed model


def test_the_keys_strategy_is_its_default(running: Running) -> None:
    key = running.new_key("hurried", KeyLimits(strategy="fastest"))
    with sdk(running, key) as client:
        raw = client.images.with_raw_response.generate(model="test-image", prompt="x")
        assert raw.headers["x-switchyard-provider"] == "sim-fast"
        raw = client.images.with_raw_response.generate(
            model="test-image", prompt="x", extra_body={"route": {"strategy": "cheapest"}})
        assert raw.headers["x-switchyard-provider"] == "sim-cheap"


def test_an_idempotent_retry_returns_the_first_response_billed_once(running: Running) -> None:
    key = running.new_key()
    headers = {"Idempotency-Key": "order-17"}
    with sdk(running, key) as client:
        first = client.images.with_raw_response.generate(model="test-image", prompt="x",
                                                         extra_headers=headers)
        again = client.images.with_raw_response.generate(model="test-image", prompt="x",
                                                         extra_headers=headers)
        with pytest.raises(openai.BadRequestError) as reused:
            client.images.generate(model="test-image", prompt="y", extra_headers=headers)
    assert again.http_response.content == first.http_response.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-switchyard-billed-usd"] == first.headers["x-switchyard-billed-usd"]
    assert reused.value.response.json()["error"]["code"] == "idempotency_key_reused"
    assert len(ledger(running)) == 1


def test_concurrent_duplicates_wait_for_the_first(running: Running) -> None:
    key = running.new_key()

    async def burst() -> list[bytes]:
        async with openai.AsyncOpenAI(base_url=running.v1, api_key=key, max_retries=0) as client:
            raws = await asyncio.gather(*(client.images.with_raw_response.generate(
                model="test-image", prompt="x", extra_headers={"Idempotency-Key": "dup"})
                for _ in range(10)))
        return [raw.http_response.content for raw in raws]

    bodies = asyncio.run(burst())
    assert len(set(bodies)) == 1
    assert len(ledger(running)) == 1


def test_idempotency_keys_are_per_tenant_key(running: Running) -> None:
    first, second = running.new_key("a"), running.new_key("b")
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(sdk(running, first))
        two = stack.enter_context(sdk(running, second))
        a = one.images.with_raw_response.generate(model="test-image", prompt="x",
                                                  extra_headers={"Idempotency-Key": "same"})
        b = two.images.with_raw_response.generate(model="test-image", prompt="x",
                                                  extra_headers={"Idempotency-Key": "same"})
    assert "idempotent-replayed" not in b.headers
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    assert len(ledger(running)) == 2
