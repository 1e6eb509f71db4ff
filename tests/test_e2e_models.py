"""Models, health, readiness and metrics endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running


def test_models_list(client: openai.OpenAI, validate: Callable[[str, Any], None]) -> None:
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    ids = [model.id for model in raw.parse().data]
    assert ids == ["test-down", "test-failover", "test-image"]


def test_model_retrieve_by_name_and_alias(client: openai.OpenAI,
                                          validate: Callable[[str, Any], None]) -> None:
    raw = client.models.with_raw_response.retrieve("ti")
    validate("Model", raw.http_response.json())
    model = raw.parse()
    assert (model.id, model.owned_by, model.object) == ("ti", "tests", "model")
    down = client.models.retrieve("test-down")
    assert down.shutdown_date == "2027-01-31"


def test_model_retrieve_unknown(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


def test_models_need_a_key(server: Running) -> None:
    assert httpx.get(f"{server.v1}/models").status_code == 401


def test_health_and_readiness(server: Running) -> None:
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == 3 and ready.json()["demo"] is True


def test_metrics_count_served_requests(server: Running, client: openai.OpenAI) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == name and found.labels == labels:
                    return float(found.value)
        return 0.0

    before = httpx.get(f"{server.base_url}/metrics").text
    client.images.generate(model="test-image", prompt="x", n=2)
    after = httpx.get(f"{server.base_url}/metrics").text
    labels = {"model": "test-image", "provider": "sim-cheap", "outcome": "success"}
    assert sample(after, "switchyard_requests_total", **labels) == \
        sample(before, "switchyard_requests_total", **labels) + 1
    images = {"model": "test-image", "provider": "sim-cheap", "tier": "1K"}
    assert sample(after, "switchyard_images_total", **images) == \
        sample(before, "switchyard_images_total", **images) + 2
    assert "switchyard_request_duration_seconds_bucket" in after
