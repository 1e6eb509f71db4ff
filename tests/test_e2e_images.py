"""End to end through the official openai SDK: generations and edits, b64 and url."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from PIL import Image as PILImage

from tests.conftest import Running


def decode(b64: str) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def png_bytes(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def test_generate_b64_default(client: openai.OpenAI, validate: Callable[[str, Any], None]) -> None:
    raw = client.images.with_raw_response.generate(
        model="test-image", prompt="a lighthouse at dawn", size="1024x1024")
    validate("ImagesResponse", raw.http_response.json())
    result = raw.parse()
    assert len(result.data) == 1 and result.data[0].url is None
    image = decode(result.data[0].b64_json or "")
    assert (image.format, image.size) == ("PNG", (1024, 1024))
    assert result.size == "1024x1024" and result.output_format == "png"
    assert raw.headers["x-switchyard-provider"] == "sim-cheap"
    assert raw.headers["x-switchyard-route"] == "test-image/sim-cheap"
    assert raw.headers["x-switchyard-upstream-model"] == "cheap-v1"
    assert raw.headers["x-switchyard-cost-usd"] == "0.020000"
    assert raw.headers["x-switchyard-attempts"] == "1"
    assert raw.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP"),
                                                 ("png", "PNG")])
def test_generate_url_serves_the_image(client: openai.OpenAI, validate: Callable[[str, Any], None],
                                       fmt: str, pil_format: str) -> None:
    raw = client.images.with_raw_response.generate(
        model="test-image", prompt="catalog shot", n=2, size="1024x1536",
        response_format="url", output_format=fmt)  # type: ignore[arg-type]
    validate("ImagesResponse", raw.http_response.json())
    result = raw.parse()
    assert len(result.data) == 2
    assert raw.headers["x-switchyard-cost-usd"] == "0.040000"
    # 1024x1536 is 2:3 at about one megapixel: the 1K tier's canonical 2:3 size.
    assert raw.headers["x-switchyard-size"] == "832x1248"
    assert raw.headers["x-switchyard-size-adjusted"] == "requested=1024x1536; delivered=832x1248"
    for item in result.data:
        assert item.b64_json is None and item.url
        response = httpx.get(item.url)
        assert response.status_code == 200
        assert response.headers["content-type"] == f"image/{fmt}"
        image = PILImage.open(io.BytesIO(response.content))
        assert (image.format, image.size) == (pil_format, (832, 1248))


def test_url_links_are_signed(client: openai.OpenAI) -> None:
    result = client.images.generate(model="test-image", prompt="x", response_format="url")
    url = result.data[0].url or ""
    assert httpx.get(url).status_code == 200
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    response = httpx.get(forged)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    bare = url.split("?")[0]
    assert httpx.get(bare).status_code == 404


def test_extension_fields_through_extra_body(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(
        model="test-image", prompt="banner", extra_body={"aspect_ratio": "16:9",
                                                          "resolution": "2K", "seed": 7})
    assert raw.headers["x-switchyard-resolution"] == "2K"
    assert raw.headers["x-switchyard-aspect-ratio"] == "16:9"
    assert raw.headers["x-switchyard-cost-usd"] == "0.040000"
    image = decode(raw.parse().data[0].b64_json or "")
    assert image.size == (2736, 1536)
    assert raw.parse().size is None  # not one of the spec's three sizes: said in headers only


def test_strategy_suffix_picks_fastest(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="test-image:fastest", prompt="x")
    assert raw.headers["x-switchyard-provider"] == "sim-fast"
    assert raw.headers["x-switchyard-cost-usd"] == "0.050000"


def test_alias_resolves(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="ti", prompt="x")
    assert raw.headers["x-switchyard-route"] == "test-image/sim-cheap"


def test_capability_filter_moves_to_a_route_that_fits(client: openai.OpenAI) -> None:
    # sim-cheap serves at most 4 images per request; sim-fast serves 10.
    raw = client.images.with_raw_response.generate(model="test-image", prompt="x", n=6)
    assert raw.headers["x-switchyard-provider"] == "sim-fast"
    assert len(raw.parse().data) == 6


def test_failover_to_the_next_route(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="test-failover", prompt="x")
    assert raw.headers["x-switchyard-provider"] == "sim-cheap"
    assert raw.headers["x-switchyard-attempts"] == "2"
    first, second = raw.headers["x-switchyard-attempt-log"].split(", ")
    assert first.startswith("sim-broken=") and first != "sim-broken=ok"
    assert second == "sim-cheap=ok"
    assert raw.headers["x-switchyard-cost-usd"] == "0.020000"


def test_all_routes_failing_is_an_upstream_error(client: openai.OpenAI,
                                                 validate: Callable[[str, Any], None]) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.generate(model="test-down", prompt="x")
    response = caught.value.response
    assert response.status_code in (429, 502, 503)
    validate("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == "upstream_error"
    assert response.headers["x-switchyard-attempts"] == "1"


def test_edit_with_two_uploaded_images(client: openai.OpenAI,
                                       validate: Callable[[str, Any], None]) -> None:
    first = ("soap.png", png_bytes(64, 64, (200, 10, 10)), "image/png")
    second = ("lotion.png", png_bytes(32, 48, (10, 200, 10)), "image/png")
    raw = client.images.with_raw_response.edit(
        model="test-image", prompt="put both in a gift basket", image=[first, second],
        size="1024x1024", input_fidelity="high")
    validate("ImagesResponse", raw.http_response.json())
    assert decode(raw.parse().data[0].b64_json or "").size == (1024, 1024)


def test_edit_with_single_image_and_mask(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.edit(
        model="test-image", prompt="replace the sky",
        image=("a.png", png_bytes(16, 16, (1, 2, 3)), "image/png"),
        mask=("m.png", png_bytes(16, 16, (0, 0, 0)), "image/png"), response_format="url")
    assert raw.parse().data[0].url


def test_edit_json_variant_with_data_url(server: Running, api_key: str,
                                         validate: Callable[[str, Any], None]) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(8, 8, (9, 9, 9))).decode()
    response = httpx.post(f"{server.v1}/images/edits", headers={
        "authorization": f"Bearer {api_key}"}, json={
        "model": "test-image", "prompt": "watercolour", "images": [{"image_url": data_url}],
        "size": "1024x1024", "moderation": "low"})
    assert response.status_code == 200, response.text
    validate("ImagesResponse", response.json())


def test_generate_with_reference_image_urls(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(
        model="test-image", prompt="same product, new scene",
        extra_body={"image_urls": ["https://example.com/product.png"]})
    assert raw.http_response.status_code == 200


def test_size_beyond_every_route_maps_to_the_nearest_tier_and_says_so(
        client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="test-image", prompt="x",
                                                   size="4096x4096")
    assert raw.headers["x-switchyard-resolution"] == "2K"
    assert raw.headers["x-switchyard-size-adjusted"] == "requested=4096x4096; delivered=2048x2048"
    assert decode(raw.parse().data[0].b64_json or "").size == (2048, 2048)


def test_format_the_route_cannot_produce_is_converted(client: openai.OpenAI,
                                                       validate: Callable[[str, Any], None]
                                                       ) -> None:
    # test-failover's sim-cheap route declares PNG only; WebP is asked.
    raw = client.images.with_raw_response.generate(model="test-failover", prompt="x",
                                                   output_format="webp")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-converted"] == "image/png -> image/webp"
    assert raw.parse().output_format == "webp"
    image = decode(raw.parse().data[0].b64_json or "")
    assert (image.format, image.size) == ("WEBP", (1024, 1024))


def test_native_format_is_not_converted(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="test-image", prompt="x",
                                                   output_format="jpeg")
    assert "x-switchyard-converted" not in raw.headers
    assert decode(raw.parse().data[0].b64_json or "").format == "JPEG"
