"""Switchyard's extensions on a multipart edit, sent as the README says: the official SDK's
`extra_body`, which it flattens into `route[strategy]`, `cache[ttl_s]` and `image_urls[]`
form fields. They are read as a JSON body's would be; and a JSON body's `image` fields, which
only a multipart edit has, are refused by name rather than dropped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Running, api_key, server  # noqa: F401  (fixtures)
from tests.protocol_kit import red_png


@pytest.fixture
def sdk(server: Running) -> Iterator[openai.OpenAI]:  # noqa: F811
    with openai.OpenAI(base_url=server.v1, api_key=server.new_key("ext"),
                       max_retries=0) as client:
        yield client


def _edit(sdk: openai.OpenAI, extra: dict[str, Any]) -> httpx.Response:
    raw = sdk.images.with_raw_response.edit(
        model="test-image", prompt="a red square, bluer",
        image=("in.png", red_png(), "image/png"), extra_body=extra)
    return raw.http_response


@pytest.mark.parametrize("route,provider", [
    ({"only": ["sim-fast"]}, "sim-fast"),  # cheapest would be sim-cheap
    ({"max_price": 0.03, "hedge": False}, "sim-cheap"),
    ({"strategy": "fastest", "ignore": ["sim-fast"]}, "sim-cheap"),
])
def test_an_edit_takes_route_through_extra_body(sdk: openai.OpenAI, route: dict[str, Any],
                                                provider: str) -> None:
    assert _edit(sdk, {"route": route}).headers["x-switchyard-provider"] == provider


@pytest.mark.parametrize("extra,param", [
    ({"route": {"strategy": "slowest"}}, "route.strategy"),
    ({"cache": {"ttl_s": -1}}, "cache.ttl_s"),
    ({"image_urls": ["http://example.com/a.png"]}, "image_urls[0]"),
])
def test_an_edits_extensions_are_checked_as_a_json_bodys(sdk: openai.OpenAI,
                                                         extra: dict[str, Any],
                                                         param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _edit(sdk, extra)
    assert refused.value.param == param


def test_an_edit_takes_cache_through_extra_body(sdk: openai.OpenAI) -> None:
    assert _edit(sdk, {"cache": {"ttl_s": 3600}}).headers["x-switchyard-cache"] == "miss"
    assert _edit(sdk, {"cache": {"ttl_s": 3600}}).headers["x-switchyard-cache"] == "hit"
    assert "x-switchyard-cache" not in _edit(sdk, {"cache": {"ttl_s": 0}}).headers


def test_a_field_given_whole_and_in_pieces_is_refused(server: Running,  # noqa: F811
                                                      api_key: str) -> None:  # noqa: F811
    response = httpx.post(f"{server.v1}/images/edits", timeout=30,
                          headers={"authorization": f"Bearer {api_key}"},
                          data={"model": "test-image", "prompt": "p",
                                "route": '{"strategy": "cheapest"}',
                                "route[strategy]": "fastest"},
                          files={"image": ("in.png", red_png(), "image/png")})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "route"


@pytest.mark.parametrize("endpoint,extra", [
    ("generations", {"image[]": ["data:image/png;base64,AAAA"]}),
    ("generations", {"image[0]": "data:image/png;base64,AAAA"}),
    ("edits", {"image": "https://example.com/a.png",
               "images": [{"image_url": "https://example.com/b.png"}]}),
])
def test_a_json_body_does_not_drop_a_multipart_image_field(server: Running,  # noqa: F811
                                                           api_key: str,  # noqa: F811
                                                           endpoint: str,
                                                           extra: dict[str, Any]) -> None:
    response = httpx.post(f"{server.v1}/images/{endpoint}", timeout=30,
                          json={"model": "test-image", "prompt": "like this one", **extra},
                          headers={"authorization": f"Bearer {api_key}"})
    assert response.status_code == 400, (response.status_code, response.text[:120])
    assert response.json()["error"]["param"] == next(iter(extra))
