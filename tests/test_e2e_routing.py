"""Choosing the route from the client: the x-switchyard-strategy header, the `route` object
sent through the SDK's extra_body, and model suffixes; mistakes are 400s naming the field."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import openai
import pytest
from PIL import Image as PILImage


def generate(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.images.with_raw_response.generate(prompt="a lighthouse", **kwargs)


def test_served_by_the_default_strategy_says_so(client: openai.OpenAI) -> None:
    raw = generate(client, model="test-image")
    assert raw.headers["x-switchyard-provider"] == "sim-cheap"
    assert raw.headers["x-switchyard-strategy"] == "cheapest"
    assert raw.headers["x-switchyard-quote-usd"] == "0.020000"


def test_the_header_picks_the_strategy(client: openai.OpenAI) -> None:
    raw = generate(client, model="test-image",
                   extra_headers={"x-switchyard-strategy": "fastest"})
    assert raw.headers["x-switchyard-provider"] == "sim-fast"
    assert raw.headers["x-switchyard-strategy"] == "fastest"


def test_the_body_beats_the_header_and_the_suffix(client: openai.OpenAI) -> None:
    raw = generate(client, model="test-image:fastest", extra_body={"route": {"strategy":
                                                                            "cheapest"}},
                   extra_headers={"x-switchyard-strategy": "fastest"})
    assert raw.headers["x-switchyard-provider"] == "sim-cheap"


@pytest.mark.parametrize(("route", "provider"), [
    ({"only": ["sim-fast"]}, "sim-fast"),
    ({"ignore": ["sim-cheap"]}, "sim-fast"),
    ({"max_price": 0.02}, "sim-cheap"),
    ({"strategy": "fastest", "max_price": 0.03}, "sim-cheap"),
    ({"max_latency_s": 1.0}, "sim-fast"),  # sim-cheap's p95 prior is 1.5 s
])
def test_route_constraints(client: openai.OpenAI, route: dict[str, Any], provider: str) -> None:
    raw = generate(client, model="test-image", extra_body={"route": route})
    assert raw.headers["x-switchyard-provider"] == provider


def test_an_edit_takes_the_route_object_as_a_form_field(client: openai.OpenAI) -> None:
    upload = io.BytesIO()
    PILImage.new("RGB", (16, 16), (1, 2, 3)).save(upload, "PNG")
    raw = client.images.with_raw_response.edit(
        model="test-image", prompt="blue", image=("a.png", upload.getvalue(), "image/png"),
        extra_body={"route": '{"only": ["sim-fast"]}'})
    assert raw.headers["x-switchyard-provider"] == "sim-fast"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"extra_headers": {"x-switchyard-strategy": "quickest"}}, "x-switchyard-strategy"),
    ({"extra_body": {"route": {"strategy": "quickest"}}}, "route.strategy"),
    ({"extra_body": {"route": "fastest"}}, "route"),
    ({"extra_body": {"route": {"fastest": True}}}, "route.fastest"),
    ({"extra_body": {"route": {"max_price": -1}}}, "route.max_price"),
    ({"extra_body": {"route": {"max_price": "cheap"}}}, "route.max_price"),
    ({"extra_body": {"route": {"max_latency_s": 0}}}, "route.max_latency_s"),
    ({"extra_body": {"route": {"only": "sim-fast"}}}, "route.only"),
    ({"extra_body": {"route": {"hedge": "yes"}}}, "route.hedge"),
    ({"extra_body": {"route": {"only": ["nobody"]}}}, "route.only"),
    ({"extra_body": {"route": {"max_price": 0.001}}}, "route.max_price"),
    ({"extra_body": {"route": {"max_latency_s": 1e-9}}}, "route.max_latency_s"),
    ({"extra_body": {"route": {"lane": "cheap"}}}, "route.lane"),
    # The test catalog has no discount lane: asked to wait for one, nothing can serve.
    ({"extra_body": {"route": {"lane": "discount"}}}, "route.lane"),
])
def test_routing_mistakes_are_400s_naming_the_field(
        client: openai.OpenAI, validate: Callable[[str, Any], None], kwargs: dict[str, Any],
        param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="test-image", prompt="x", **kwargs)
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["param"] == param
