"""End to end through the official openai SDK: generations and edits, b64 and url.

Most tests run on the simulated test catalog; those about the images a client sends run on the
shipped gpt-image-2 route with a fake OpenAI upstream, to see what reached the host."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image as PILImage

from proxy import catalog as catalog_module
from proxy.api.uploads import decode_data_url
from proxy.config import default_routes_dir
from proxy.providers import ADAPTERS
from tests.conftest import Running, make_config, serve
from tests.fakes.openai_images import FakeOpenAIImages, Seen, image_bytes


def decode(b64: str) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def png_bytes(width: int, height: int, colour: tuple[int, int, int],
              alpha: int | None = None) -> bytes:
    out = io.BytesIO()
    if alpha is None:
        PILImage.new("RGB", (width, height), colour).save(out, "PNG")
    else:
        PILImage.new("RGBA", (width, height), (*colour, alpha)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Hosted:
    """A real Switchyard on the shipped catalog whose `openai` provider is a fake."""

    running: Running
    upstream: FakeOpenAIImages
    key: str
    sdk: openai.OpenAI


@pytest.fixture
def gpt_image(tmp_path: Path) -> Iterator[Hosted]:
    catalog = catalog_module.load(default_routes_dir(), {"OPENAI_API_KEY": "test-key"},
                                  demo=False, protocols=ADAPTERS)
    upstream = FakeOpenAIImages()
    with contextlib.ExitStack() as stack:
        running = stack.enter_context(serve(make_config(tmp_path / "data"), catalog,
                                            {"openai": upstream}))
        key = running.new_key()
        sdk = stack.enter_context(openai.OpenAI(base_url=running.v1, api_key=key,
                                                max_retries=0))
        yield Hosted(running, upstream, key, sdk)


def received_images(seen: Seen) -> list[bytes | str]:
    """The input images an OpenAI edit request carried, in order: the bytes of uploads and of
    data: URLs, other URLs as given."""
    if seen.json is None:
        return [data for name, _, _, data in seen.files if name in ("image", "image[]")]
    return [_bytes_of(item["image_url"]) for item in seen.json["images"]]


def _bytes_of(url: str) -> bytes | str:
    if not url.startswith("data:"):
        return url
    return decode_data_url(url, "image").data or b""


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


def test_edit_with_two_uploaded_images(gpt_image: Hosted,
                                       validate: Callable[[str, Any], None]) -> None:
    """Both uploads reach the host, in order and byte for byte, as OpenAI's `image[]`."""
    first = png_bytes(64, 64, (200, 10, 10))
    second = png_bytes(32, 48, (10, 200, 10))
    raw = gpt_image.sdk.images.with_raw_response.edit(
        model="gpt-image-2", prompt="put both in a gift basket", size="1024x1024",
        image=[("soap.png", first, "image/png"), ("lotion.png", second, "image/png")],
        input_fidelity="high")
    validate("ImagesResponse", raw.http_response.json())
    (seen,) = gpt_image.upstream.requests
    assert (seen.method, seen.url.path) == ("POST", "/v1/images/edits")
    assert [(mime, data) for _, _, mime, data in seen.files] == [
        ("image/png", first), ("image/png", second)]
    assert all(name in ("image", "image[]") for name, _, _, _ in seen.files)
    assert seen.form.get("input_fidelity") == "high"
    assert base64.b64decode(raw.parse().data[0].b64_json or "") == \
        image_bytes(1024, 1024, "png", "put both in a gift basket|0")


def test_edit_with_single_image_and_mask(gpt_image: Hosted) -> None:
    picture = png_bytes(16, 16, (1, 2, 3))
    mask = png_bytes(16, 16, (0, 0, 0), alpha=0)  # transparent: the area to repaint
    raw = gpt_image.sdk.images.with_raw_response.edit(
        model="gpt-image-2", prompt="replace the sky", size="1024x1024",
        image=("a.png", picture, "image/png"), mask=("m.png", mask, "image/png"),
        response_format="url")
    (seen,) = gpt_image.upstream.requests
    assert (seen.method, seen.url.path) == ("POST", "/v1/images/edits")
    # Multipart as OpenAI takes it: the image in `image`, the mask byte for byte in `mask`.
    assert [(name, mime, data) for name, _, mime, data in seen.files] == [
        ("image", "image/png", picture), ("mask", "image/png", mask)]
    (item,) = raw.parse().data or []
    served = httpx.get(item.url or "")
    assert served.content == image_bytes(1024, 1024, "png", "replace the sky|0")


@pytest.mark.parametrize("moderation", [None, "low"])
def test_edit_json_variant_with_data_url(gpt_image: Hosted, moderation: str | None,
                                         validate: Callable[[str, Any], None]) -> None:
    picture = png_bytes(8, 8, (9, 9, 9))
    data_url = "data:image/png;base64," + base64.b64encode(picture).decode()
    body: dict[str, Any] = {"model": "gpt-image-2", "prompt": "watercolour",
                            "size": "1024x1024", "images": [{"image_url": data_url}]}
    if moderation:
        body["moderation"] = moderation
    response = httpx.post(f"{gpt_image.running.v1}/images/edits", json=body, headers={
        "authorization": f"Bearer {gpt_image.key}"})
    assert response.status_code == 200, response.text
    validate("ImagesResponse", response.json())
    (seen,) = gpt_image.upstream.requests
    assert received_images(seen) == [picture]
    # Without `moderation` the image goes up as an upload; OpenAI's multipart has no such field.
    assert (seen.json is not None) is (moderation is not None)
    if moderation:
        assert seen.json["moderation"] == moderation
    (item,) = response.json()["data"]
    assert base64.b64decode(item["b64_json"]) == image_bytes(1024, 1024, "png", "watercolour|0")


def test_generate_with_reference_image_urls(gpt_image: Hosted) -> None:
    reference = png_bytes(24, 24, (5, 80, 160))
    urls = ["https://example.com/product.png",
            "data:image/png;base64," + base64.b64encode(reference).decode()]
    raw = gpt_image.sdk.images.with_raw_response.generate(
        model="gpt-image-2", prompt="same product, new scene", size="1024x1024",
        extra_body={"image_urls": urls})
    (seen,) = gpt_image.upstream.requests
    # OpenAI's generations take no images: references make it an edit, as JSON (one is a URL).
    assert (seen.method, seen.url.path) == ("POST", "/v1/images/edits")
    assert received_images(seen) == [urls[0], reference]
    assert seen.json["prompt"] == "same product, new scene"
    (item,) = raw.parse().data or []
    image = base64.b64decode(item.b64_json or "")
    assert image == image_bytes(1024, 1024, "png", "same product, new scene|0")


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
