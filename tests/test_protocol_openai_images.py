"""The openai_images protocol against a fake OpenAI: exact requests, results, every error."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.domain import InputImage
from proxy.failures import Kind
from proxy.providers import sizes
from proxy.providers.openai_images import ADAPTER
from tests import protocol_kit as kit
from tests.fakes import openai_images as fake
from tests.fakes.openai_images import (
    BASE_URL,
    FILES_HOST,
    Canned,
    FakeOpenAIImages,
    failure_of,
    image_b64,
    image_bytes,
    make_request,
    make_route,
    run,
)
from tests.protocol_kit import decoded

GPT_IMAGE_2_SIZES = {"multiple": 16, "max_ratio": 3.0, "min_pixels": 655_360,
                     "max_pixels": 8_294_400, "max_edge": 3840}


def route(**kw: Any) -> Any:
    return make_route("openai_images", kw.pop("base_url", BASE_URL), **kw)


def png(width: int = 16, height: int = 16) -> InputImage:
    return InputImage("image/png", data=image_bytes(width, height, "png"))


# --- generations ---------------------------------------------------------------------------


def test_generation_request_and_result() -> None:
    upstream = FakeOpenAIImages()
    result = run(ADAPTER, make_request(size="1024x1024"), route(), upstream)
    (seen,) = upstream.requests
    assert (seen.method, seen.url.path) == ("POST", "/v1/images/generations")
    assert seen.headers["authorization"] == "Bearer test-key"
    assert seen.json == {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "n": 1,
                         "size": "1024x1024", "output_format": "png"}
    (image,) = result.images
    assert image.mime == "image/png"
    assert base64.b64decode(image.b64) == image_bytes(1024, 1024, "png",
                                                      "a lighthouse at dawn|0")
    assert result.size == "1024x1024"
    assert result.upstream_id is not None and result.upstream_id.startswith("req_")
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (50, 4160)
    assert (result.usage.input_image_tokens, result.usage.output_image_tokens) == (10, 4100)


def test_optional_fields_are_mapped_through() -> None:
    upstream = FakeOpenAIImages()
    request = make_request(n=3, quality="high", background="transparent", output_format="webp",
                           output_compression=80, moderation="low", user="user-1234", seed=5)
    result = run(ADAPTER, request, route(), upstream)
    body = upstream.requests[0].json
    assert body == {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "n": 3,
                    "size": "1024x1024", "quality": "high", "background": "transparent",
                    "output_format": "webp", "output_compression": 80, "moderation": "low",
                    "user": "user-1234"}  # OpenAI has no seed: it is not material, not sent
    assert [i.mime for i in result.images] == ["image/webp"] * 3


def test_exact_size_goes_as_is_when_the_route_accepts_arbitrary_sizes() -> None:
    upstream = FakeOpenAIImages()
    result = run(ADAPTER, make_request(size="2048x1152"),
                 route(options={"arbitrary_sizes": GPT_IMAGE_2_SIZES}), upstream)
    assert upstream.requests[0].json["size"] == "2048x1152"
    assert result.size == "2048x1152"


def test_invalid_exact_size_is_fitted_and_the_delivered_size_returned() -> None:
    upstream = FakeOpenAIImages()
    result = run(ADAPTER, make_request(size="1000x1000"),
                 route(options={"arbitrary_sizes": GPT_IMAGE_2_SIZES}), upstream)
    assert upstream.requests[0].json["size"] == "992x992"
    assert result.size == "992x992"


def test_fixed_sizes_send_the_nearest_listed_size() -> None:
    upstream = FakeOpenAIImages()
    result = run(ADAPTER, make_request(size="1024x768"), route(), upstream)
    assert upstream.requests[0].json["size"] == "1536x1024"
    assert result.size == "1536x1024"


def test_size_comes_from_the_image_when_the_host_does_not_echo_it() -> None:
    upstream = FakeOpenAIImages(echo_size=False)
    result = run(ADAPTER, make_request(ratio="2:3"), route(), upstream)
    assert upstream.requests[0].json["size"] == "1024x1536"
    assert result.size == "1024x1536"


@pytest.mark.parametrize(("shape", "expected"), [
    ({"size": "3840x2160"}, (3840, 2160)),
    ({"size": "4096x4096"}, (2880, 2880)),           # over max pixels: scaled down
    ({"size": "512x512"}, (816, 816)),               # under min pixels: scaled up
    ({"size": "4000x1000"}, (3456, 1152)),           # ratio 4:1 clamped to 3:1
    ({"ratio": "16:9", "tier": "4K"}, (3840, 2160)),
    ({"ratio": "1:1", "tier": "2K"}, (2048, 2048)),
])
def test_choose_size_with_gpt_image_2_rules(shape: dict[str, str],
                                            expected: tuple[int, int]) -> None:
    chosen = sizes.choose_size(make_request(**shape),
                             route(options={"arbitrary_sizes": GPT_IMAGE_2_SIZES}))
    assert chosen == expected
    assert sizes.SizeRules(**GPT_IMAGE_2_SIZES).accepts(*chosen)


@pytest.mark.parametrize(("shape", "expected"), [
    ({"ratio": "16:9"}, (1536, 1024)), ({"ratio": "9:16"}, (1024, 1536)),
    ({"ratio": "1:1", "tier": "2K"}, (1024, 1024)),
])
def test_choose_size_from_the_default_list(shape: dict[str, str],
                                           expected: tuple[int, int]) -> None:
    assert sizes.choose_size(make_request(**shape), route(), ("1024x1024", "1536x1024",
                                                            "1024x1536")) == expected


def test_host_options_auth_style_path_response_format_and_extra_body() -> None:
    # An Azure-style host: api-key header, deployment path with api-version, URL results.
    upstream = FakeOpenAIImages(auth_header="api-key", auth_scheme="",
                                prefix="/openai/deployments/img2", result="url")
    provider_options = {"auth_header": "api-key", "auth_scheme": "",
                        "generations_path": "/openai/deployments/{model}/images/generations"
                                            "?api-version=2025-04-01-preview"}
    result = run(ADAPTER, make_request(), route(
        base_url="https://myres.openai.azure.com", upstream_model="img2",
        allowed_hosts=(FILES_HOST,), provider_options=provider_options,
        options={"response_format": "url", "extra_body": {"partner_tag": "x"}}), upstream)
    submit, download = upstream.requests
    assert submit.url.path == "/openai/deployments/img2/images/generations"
    assert submit.url.params["api-version"] == "2025-04-01-preview"
    assert submit.headers["api-key"] == "test-key" and "authorization" not in submit.headers
    assert submit.json["response_format"] == "url" and submit.json["partner_tag"] == "x"
    assert download.url.host == FILES_HOST and "api-key" not in download.headers
    assert base64.b64decode(result.images[0].b64) == upstream.files[download.url.path][0]
    assert result.images[0].mime == "image/png"


def test_result_url_on_a_disallowed_host_is_refused() -> None:
    upstream = FakeOpenAIImages(result="url")
    failure = failure_of(ADAPTER, make_request(), route(), upstream)
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert len(upstream.requests) == 1  # nothing was sent to the unlisted host


def test_result_download_failure_is_upstream_broken() -> None:
    upstream = FakeOpenAIImages(script=[Canned(200, {"created": 1, "data": [
        {"url": f"https://{FILES_HOST}/img/gone.png"}]})])
    failure = failure_of(ADAPTER, make_request(), route(allowed_hosts=(FILES_HOST,)), upstream)
    assert failure.kind is Kind.UPSTREAM_BROKEN and "HTTP 404" in failure.message


def test_data_url_results_pass_through_without_a_download() -> None:
    b64 = image_b64(64, 48, "jpeg")
    upstream = FakeOpenAIImages(script=[Canned(200, {"created": 1, "data": [
        {"url": f"data:image/jpeg;base64,{b64}"}]})])
    result = run(ADAPTER, make_request(), route(), upstream)
    assert result.images[0].b64 == b64 and result.images[0].mime == "image/jpeg"
    assert result.size == "64x48" and len(upstream.requests) == 1


def test_omitted_material_field_is_refused_not_dropped() -> None:
    upstream = FakeOpenAIImages()
    failure = failure_of(ADAPTER, make_request(quality="high"),
                         route(options={"omit_fields": ["quality", "user"]}), upstream)
    assert failure.kind is Kind.BAD_REQUEST and "'quality'" in failure.message
    assert upstream.requests == []
    run(ADAPTER, make_request(user="u-1"), route(options={"omit_fields": ["user"]}), upstream)
    assert "user" not in upstream.requests[0].json


# --- edits ---------------------------------------------------------------------------------


def test_edit_with_two_images_and_a_mask_is_multipart() -> None:
    upstream = FakeOpenAIImages()
    first, second, mask = png(16, 16), png(32, 48), png(16, 16)
    request = make_request("put both in a basket", kind="edit", images=(first, second),
                           mask=mask, input_fidelity="high", quality="medium")
    result = run(ADAPTER, request, route(), upstream)
    (seen,) = upstream.requests
    assert seen.url.path == "/v1/images/edits"
    assert seen.headers["content-type"].startswith("multipart/form-data")
    assert seen.form == {"model": "gpt-image-2", "prompt": "put both in a basket", "n": "1",
                         "size": "1024x1024", "output_format": "png", "quality": "medium",
                         "input_fidelity": "high"}
    assert [(f[0], f[1], f[2]) for f in seen.files] == [
        ("image[]", "image-0.png", "image/png"), ("image[]", "image-1.png", "image/png"),
        ("mask", "mask.png", "image/png")]
    assert [f[3] for f in seen.files] == [first.data, second.data, mask.data]
    assert len(result.images) == 1


def test_edit_with_one_image_uses_the_image_field() -> None:
    upstream = FakeOpenAIImages()
    run(ADAPTER, make_request(kind="edit", images=(png(),)), route(), upstream)
    assert [f[0] for f in upstream.requests[0].files] == ["image"]


def test_edit_with_an_image_url_or_moderation_uses_the_json_variant() -> None:
    upstream = FakeOpenAIImages()
    image = png(8, 8)
    request = make_request(kind="edit", images=(
        InputImage("application/octet-stream", url="https://example.com/a.png"), image))
    run(ADAPTER, request, route(), upstream)
    body = upstream.requests[0].json
    assert upstream.requests[0].url.path == "/v1/images/edits"
    assert body["images"] == [
        {"image_url": "https://example.com/a.png"},
        {"image_url": "data:image/png;base64," + base64.b64encode(image.data or b"").decode()}]
    run(ADAPTER, make_request(kind="edit", images=(image,), moderation="low"), route(), upstream)
    assert upstream.requests[1].json["moderation"] == "low"
    assert "images" in upstream.requests[1].json


def test_json_edits_off_refuses_an_image_url() -> None:
    upstream = FakeOpenAIImages()
    request = make_request(kind="edit", images=(
        InputImage("application/octet-stream", url="https://example.com/a.png"),))
    failure = failure_of(ADAPTER, request, route(options={"json_edits": False}), upstream)
    assert failure.kind is Kind.BAD_REQUEST and upstream.requests == []


def test_generation_with_reference_images_goes_to_edits() -> None:
    upstream = FakeOpenAIImages()
    run(ADAPTER, make_request(images=(png(),)), route(), upstream)
    assert upstream.requests[0].url.path == "/v1/images/edits"


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("canned", "kind", "retry_after"), [
    (fake.MODERATION_BLOCKED, Kind.CONTENT_BLOCKED, None),
    (fake.CONTENT_POLICY, Kind.CONTENT_BLOCKED, None),
    (fake.ERROR_IN_200, Kind.CONTENT_BLOCKED, None),
    (fake.INVALID_SIZE, Kind.BAD_REQUEST, None),
    (fake.RATE_LIMITED, Kind.RATE_LIMITED, 7.0),
    (fake.INSUFFICIENT_QUOTA, Kind.AUTH, None),
    (fake.MODEL_NOT_FOUND, Kind.UPSTREAM_BROKEN, None),
    (fake.SERVER_ERROR, Kind.UPSTREAM_BROKEN, None),
    (fake.OVERLOADED, Kind.OVERLOADED, 3.0),
    (fake.GATEWAY_HTML, Kind.OVERLOADED, None),
    (Canned(200, {"created": 1, "data": []}), Kind.UPSTREAM_BROKEN, None),
    (Canned(200, b"not json", {"content-type": "text/plain"}), Kind.UPSTREAM_BROKEN, None),
])
def test_every_error_shape_maps_to_its_kind(canned: Canned, kind: Kind,
                                            retry_after: float | None) -> None:
    failure = failure_of(ADAPTER, make_request(), route(), FakeOpenAIImages(script=[canned]))
    assert failure.kind is kind
    assert failure.retry_after_s == retry_after
    assert "http" not in failure.message


def test_content_block_message_is_the_upstreams_without_links() -> None:
    failure = failure_of(ADAPTER, make_request(), route(),
                         FakeOpenAIImages(script=[fake.MODERATION_BLOCKED]))
    assert failure.message.startswith("upstream refused the content (moderation_blocked): "
                                      "Your request was rejected by the safety system")


def test_wrong_key_is_auth_and_never_echoed() -> None:
    failure = failure_of(ADAPTER, make_request(), route(key="sk-wrong"), FakeOpenAIImages())
    assert failure.kind is Kind.AUTH and failure.status == 401
    assert "sk-" not in failure.message and "invalid_api_key" in failure.message


def test_missing_key_is_auth_before_any_call() -> None:
    upstream = FakeOpenAIImages()
    failure = failure_of(ADAPTER, make_request(), route(key=None), upstream)
    assert failure.kind is Kind.AUTH and upstream.requests == []


def test_error_kinds_option_overrides_the_table() -> None:
    upstream = FakeOpenAIImages(script=[Canned(400, fake.error_body(
        "busy", "invalid_request_error", "engine_busy"))])
    failure = failure_of(ADAPTER, make_request(),
                         route(provider_options={"error_kinds": {"engine_*": "overloaded"}}),
                         upstream)
    assert failure.kind is Kind.OVERLOADED


def test_deadline_expiry_is_a_timeout() -> None:
    failure = failure_of(ADAPTER, make_request(), route(), FakeOpenAIImages(delay_s=5),
                         deadline_s=0.2)
    assert failure.kind is Kind.TIMEOUT


# --- end to end through the official SDK ---------------------------------------------------

PROVIDERS = f"""
[openai]
protocol = "openai_images"
base_url = "{BASE_URL}"
key_env = "OPENAI_API_KEY"
timeout_s = 60
allowed_hosts = ["{FILES_HOST}"]
"""
MODEL = """
name = "gpt-image-2"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
max_n = 10
edits = true
max_reference_images = 16
output_formats = ["png", "jpeg", "webp"]
backgrounds = ["auto", "opaque", "transparent"]

[[routes]]
provider = "openai"
upstream_model = "gpt-image-2"
price.per_image = { "1K" = 0.211, "2K" = 0.844, "4K" = 1.67 }
[routes.options.arbitrary_sizes]
multiple = 16
max_ratio = 3.0
min_pixels = 655360
max_pixels = 8294400
max_edge = 3840
"""


@pytest.fixture
def upstream() -> FakeOpenAIImages:
    return FakeOpenAIImages()


@pytest.fixture
def sdk(tmp_path: Path, upstream: FakeOpenAIImages) -> Iterator[openai.OpenAI]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS, {"gpt-image-2": MODEL},
                                {"OPENAI_API_KEY": "test-key"})
    with kit.switchyard(tmp_path, "openai", catalog) as start:
        yield start(upstream)


def test_e2e_generate(sdk: openai.OpenAI, upstream: FakeOpenAIImages,
                      validate: Callable[[str, Any], None]) -> None:
    raw = sdk.images.with_raw_response.generate(model="gpt-image-2", prompt="a red fox",
                                                size="1536x1024", quality="low")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "openai"
    result = raw.parse()
    image = decoded(result.data[0].b64_json or "")
    assert (image.format, image.size) == ("PNG", (1536, 1024))
    assert result.usage is not None and result.usage.output_tokens == 4160
    assert upstream.requests[0].json["size"] == "1536x1024"
    assert upstream.requests[0].json["quality"] == "low"


def test_e2e_arbitrary_size_adjusted_is_said(sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="gpt-image-2", prompt="x",
                                                size="1000x1000")
    assert raw.headers["x-switchyard-size"] == "992x992"
    assert raw.headers["x-switchyard-size-adjusted"] == "requested=1000x1000; delivered=992x992"


def test_e2e_edit_with_two_images(sdk: openai.OpenAI, upstream: FakeOpenAIImages,
                                  validate: Callable[[str, Any], None]) -> None:
    first = ("a.png", image_bytes(32, 32, "png", "a"), "image/png")
    second = ("b.png", image_bytes(48, 32, "png", "b"), "image/png")
    raw = sdk.images.with_raw_response.edit(model="gpt-image-2", prompt="a gift basket",
                                            image=[first, second], input_fidelity="high")
    validate("ImagesResponse", raw.http_response.json())
    assert [f[0] for f in upstream.requests[0].files] == ["image[]", "image[]"]
    assert upstream.requests[0].form["input_fidelity"] == "high"


def test_e2e_moderation_block_surfaces_as_openai_error(
        sdk: openai.OpenAI, upstream: FakeOpenAIImages,
        validate: Callable[[str, Any], None]) -> None:
    upstream.script.append(fake.MODERATION_BLOCKED)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="gpt-image-2", prompt="something refused")
    validate("ErrorResponse", caught.value.response.json())
    assert caught.value.code == "moderation_blocked"
    assert caught.value.response.headers["x-switchyard-attempt-log"] == \
        "openai=content_blocked"
