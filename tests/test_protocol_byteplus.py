"""The byteplus protocol against a fake BytePlus ModelArk (Seedream): exact requests, size
rules, per-image failures, every error shape, and end to end through the official openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import geometry
from proxy.catalog import Route
from proxy.domain import InputImage, Usage
from proxy.failures import Kind
from proxy.providers.byteplus import ADAPTER
from tests import protocol_kit as kit
from tests.fakes import byteplus as fake
from tests.fakes.byteplus import API_HOST, BASE_URL, FILES_HOST, FakeBytePlus
from tests.fakes.openai_images import (
    Canned,
    failure_of,
    image_b64,
    image_bytes,
    make_request,
    make_route,
    run,
)
from tests.protocol_kit import Start, decoded

SEEDREAM_4_0 = "seedream-4-0-250828"
SEEDREAM_4_5 = "seedream-4-5-251128"
RESULT_HOSTS = ("*.tos-ap-southeast-1.bytepluses.com",)
# Sequential ("batch") generation of up to three images, which an operator can switch on.
BATCH = {"extra_body": {"sequential_image_generation": "auto",
                        "sequential_image_generation_options": {"max_images": 3}}}


def route(**kw: Any) -> Route:
    kw.setdefault("upstream_model", SEEDREAM_4_0)
    return make_route("byteplus", kw.pop("base_url", BASE_URL), **kw)


def url_route(**kw: Any) -> Route:
    return route(allowed_hosts=RESULT_HOSTS, options={"response_format": "url"}, **kw)


def png(width: int = 16, height: int = 16) -> InputImage:
    return InputImage("image/png", data=image_bytes(width, height, "png"))


def data_url(image: InputImage) -> str:
    return kit.data_uri(image.data or b"", image.mime)


# --- the request ---------------------------------------------------------------------------


def test_generation_sends_the_exact_request_and_returns_a_real_jpeg() -> None:
    upstream = FakeBytePlus()
    result = run(ADAPTER, make_request(size="1280x720"), route(), upstream)
    (seen,) = upstream.requests
    assert (seen.method, str(seen.url)) == ("POST", f"{BASE_URL}/images/generations")
    assert seen.headers["authorization"] == "Bearer test-key"
    assert seen.headers["content-type"] == "application/json"
    # Ark's defaults are a 24 h URL and a visible watermark: both are overridden explicitly.
    assert seen.json == {"model": SEEDREAM_4_0, "prompt": "a lighthouse at dawn",
                         "size": "1280x720", "sequential_image_generation": "disabled",
                         "response_format": "b64_json", "watermark": False}
    (image,) = result.images
    picture = decoded(image)
    assert (image.mime, picture.format, picture.size) == ("image/jpeg", "JPEG", (1280, 720))
    assert result.size == "1280x720"
    assert result.usage == Usage(output_tokens=3600, output_image_tokens=3600)  # 1280*720/256
    assert result.upstream_id is not None and result.upstream_id.startswith("02")


def test_reference_images_go_as_one_string_or_a_list() -> None:
    upstream = FakeBytePlus()
    one = png()
    run(ADAPTER, make_request(kind="edit", images=(one,)), route(), upstream)
    assert upstream.requests[0].json["image"] == data_url(one)
    url = InputImage("application/octet-stream", url="https://example.com/ref.jpg")
    run(ADAPTER, make_request(kind="edit", images=(one, url)), route(), upstream)
    assert upstream.requests[1].json["image"] == [data_url(one), "https://example.com/ref.jpg"]


def test_seed_goes_only_to_models_that_take_it() -> None:
    upstream = FakeBytePlus()
    run(ADAPTER, make_request(seed=42), route(), upstream)
    assert "seed" not in upstream.requests[0].json
    seeded = route(upstream_model="seedream-3-0-t2i-250415", options={"accepts_seed": True})
    run(ADAPTER, make_request(seed=42), seeded, upstream)
    assert upstream.requests[1].json["seed"] == 42


def test_route_options_watermark_output_format_and_extra_body() -> None:
    upstream = FakeBytePlus()
    options = {"watermark": True, "accepts_output_format": True,
               "extra_body": {"optimize_prompt_options": {"mode": "fast"}}}
    result = run(ADAPTER, make_request(output_format="png"), route(options=options), upstream)
    body = upstream.requests[0].json
    assert body["watermark"] is True and body["output_format"] == "png"
    assert body["optimize_prompt_options"] == {"mode": "fast"}
    assert result.images[0].mime == "image/png" and decoded(result.images[0]).format == "PNG"


@pytest.mark.parametrize(("request_changes", "route_changes", "kind", "words"), [
    ({"kind": "edit", "images": (png(),), "mask": png()}, {}, Kind.BAD_REQUEST, "mask"),
    ({}, {"key": None}, Kind.AUTH, "no API key"),
])
def test_what_cannot_be_sent_is_refused_before_any_call(
        request_changes: dict[str, Any], route_changes: dict[str, Any], kind: Kind,
        words: str) -> None:
    upstream = FakeBytePlus()
    failure = failure_of(ADAPTER, make_request(**request_changes), route(**route_changes),
                         upstream)
    assert failure.kind is kind and words in failure.message
    assert upstream.requests == []


def test_a_wrong_key_is_auth_and_never_echoed() -> None:
    failure = failure_of(ADAPTER, make_request(), route(key="ark-wrong-0123456789"),
                         FakeBytePlus())
    assert (failure.kind, failure.status) == (Kind.AUTH, 401)
    assert "AuthenticationError" in failure.message and "wrong" not in failure.message


# --- sizes ---------------------------------------------------------------------------------


# A 4.5 route need only raise the floor; Seedream's ratio of 16 and pixel cap still hold.
SEEDREAM_4_5_SIZES = {"arbitrary_sizes": {"min_pixels": 3_686_400}}


@pytest.mark.parametrize(("model", "options", "shape", "sent"), [
    (SEEDREAM_4_0, {}, {"size": "1280x720"}, "1280x720"),   # exactly the floor: as is
    (SEEDREAM_4_0, {}, {"size": "800x800"}, "960x960"),     # under 921,600 pixels: scaled up
    (SEEDREAM_4_0, {}, {"size": "8192x8192"}, "4096x4096"),  # over 16,777,216: scaled down
    (SEEDREAM_4_0, {}, {"size": "8192x256"}, "5792x362"),   # ratio 32 brought to 16
    (SEEDREAM_4_0, {}, {"ratio": "16:9", "tier": "4K"}, "5461x3072"),
    (SEEDREAM_4_0, {}, {"ratio": "1:1", "tier": "0.5K"}, "960x960"),
    (SEEDREAM_4_5, SEEDREAM_4_5_SIZES, {"size": "4096x1024"}, "4096x1024"),  # generic: ratio 3
    (SEEDREAM_4_5, SEEDREAM_4_5_SIZES, {"size": "8192x2048"}, "8192x2048"),  # the pixel cap
    (SEEDREAM_4_5, SEEDREAM_4_5_SIZES, {"size": "1024x1024"}, "1920x1920"),  # 4.5's floor
    (SEEDREAM_4_5, SEEDREAM_4_5_SIZES, {"size": "2000x1000"}, "2715x1358"),  # not 16-multiples
])
def test_sizes_fit_the_models_limits(model: str, options: dict[str, Any],
                                     shape: dict[str, str], sent: str) -> None:
    upstream = FakeBytePlus()  # refuses any size outside the model's limits
    result = run(ADAPTER, make_request(**shape), route(upstream_model=model, options=options),
                 upstream)
    assert upstream.requests[0].json["size"] == sent
    assert result.size == sent


def test_a_listed_sizes_route_sends_the_nearest_listed_size() -> None:
    upstream = FakeBytePlus()
    sizes = ["2048x2048", "2304x1728", "1728x2304", "2560x1440", "1440x2560", "2496x1664",
             "1664x2496", "3024x1296"]
    listed = route(options={"sizes": sizes})
    run(ADAPTER, make_request(ratio="16:9"), listed, upstream)
    run(ADAPTER, make_request(ratio="21:9"), listed, upstream)
    assert [s.json["size"] for s in upstream.requests] == ["2560x1440", "3024x1296"]


def test_a_size_the_model_refuses_is_a_bad_request_naming_size() -> None:
    # A 4.5 route left on 4.0's limits: Ark refuses 1024x1024 and says which field.
    failure = failure_of(ADAPTER, make_request(size="1024x1024"),
                         route(upstream_model=SEEDREAM_4_5), FakeBytePlus())
    assert (failure.kind, failure.status) == (Kind.BAD_REQUEST, 400)
    assert "(InvalidParameter)" in failure.message and "`size`" in failure.message


def test_an_unreadable_upstream_size_gives_way_to_the_image_header() -> None:
    # Ark's docs also write sizes with a multiplication sign; a size that is not WxH is not
    # trusted, and the image header decides.
    body = {"model": SEEDREAM_4_0, "created": 1, "data": [
        {"b64_json": image_b64(1280, 720, "jpeg"), "size": "2048\u00d72048"}]}
    result = run(ADAPTER, make_request(), route(), FakeBytePlus(script=[Canned(200, body)]))
    assert result.size == "1280x720"


# --- URL results ---------------------------------------------------------------------------


def test_url_results_are_fetched_from_the_allowed_host_without_the_key() -> None:
    upstream = FakeBytePlus()
    result = run(ADAPTER, make_request(), url_route(), upstream)
    submit, download = upstream.requests
    assert submit.json["response_format"] == "url"
    assert (download.method, download.url.host) == ("GET", FILES_HOST)
    assert "authorization" not in download.headers
    (image,) = result.images
    assert base64.b64decode(image.b64) == upstream.files[download.url.path]
    assert image.mime == "image/jpeg" and decoded(image).size == (1024, 1024)


def test_a_url_on_a_host_not_allowed_is_refused_before_any_request_goes_there() -> None:
    upstream = FakeBytePlus(result_host="ark-results.evil.example")
    failure = failure_of(ADAPTER, make_request(), url_route(), upstream)
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert [s.url.host for s in upstream.requests] == [API_HOST]


def test_an_expired_result_url_is_upstream_broken() -> None:
    body = {"model": SEEDREAM_4_0, "created": 1,
            "data": [{"url": f"https://{FILES_HOST}/gone/0.jpeg", "size": "1024x1024"}]}
    upstream = FakeBytePlus(script=[Canned(200, body)])
    failure = failure_of(ADAPTER, make_request(), url_route(), upstream)
    assert failure.kind is Kind.UPSTREAM_BROKEN and "HTTP 404" in failure.message


# --- per-image failures and n --------------------------------------------------------------


@pytest.mark.parametrize(("errors", "delivered"), [
    ({1: fake.ITEM_BLOCKED}, 2),   # a refused image: the batch goes on
    ({1: fake.ITEM_INTERNAL}, 1),  # an internal error: the batch ends there
])
def test_a_batch_with_failed_images_delivers_what_succeeded(
        errors: dict[int, tuple[str, str]], delivered: int) -> None:
    upstream = FakeBytePlus(item_errors=errors)
    result = run(ADAPTER, make_request(), route(options=BATCH), upstream)
    assert upstream.requests[0].json["sequential_image_generation"] == "auto"
    assert len(result.images) == delivered
    assert all(decoded(i).size == (1024, 1024) for i in result.images)
    assert result.usage is not None and result.usage.output_tokens == delivered * 4096


@pytest.mark.parametrize(("errors", "options", "kind", "code"), [
    ({0: fake.ITEM_BLOCKED}, {}, Kind.CONTENT_BLOCKED, fake.ITEM_BLOCKED[0]),
    ({0: fake.ITEM_BLOCKED, 1: fake.ITEM_BLOCKED, 2: fake.ITEM_BLOCKED}, BATCH,
     Kind.CONTENT_BLOCKED, fake.ITEM_BLOCKED[0]),
    # Blocked and broken: the broken one tells, as another host may well succeed.
    ({0: fake.ITEM_BLOCKED, 1: fake.ITEM_INTERNAL}, BATCH, Kind.UPSTREAM_BROKEN,
     fake.ITEM_INTERNAL[0]),
])
def test_every_image_failing_is_a_failure(errors: dict[int, tuple[str, str]],
                                          options: dict[str, Any], kind: Kind,
                                          code: str) -> None:
    failure = failure_of(ADAPTER, make_request(), route(options=options),
                         FakeBytePlus(item_errors=errors))
    assert failure.kind is kind and f"({code})" in failure.message


def test_n_runs_as_parallel_one_image_calls() -> None:
    upstream = FakeBytePlus(delay_s=0.05)
    result = run(ADAPTER, make_request(n=3), route(), upstream)
    assert len(result.images) == 3 and len(upstream.requests) == 3
    assert upstream.peak_in_flight == 3
    for seen in upstream.requests:
        assert seen.json["sequential_image_generation"] == "disabled" and "n" not in seen.json


def test_n_delivers_what_the_parallel_calls_made_and_fails_only_if_none_did() -> None:
    upstream = FakeBytePlus(script=[fake.RATE_LIMITED])
    assert len(run(ADAPTER, make_request(n=3), route(), upstream).images) == 2
    upstream = FakeBytePlus(script=[fake.OUTPUT_IMAGE_SENSITIVE] * 2)
    failure = failure_of(ADAPTER, make_request(n=2), route(), upstream)
    assert failure.kind is Kind.CONTENT_BLOCKED and len(upstream.requests) == 2


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("canned", "kind", "retry_after"), [
    (fake.AUTHENTICATION, Kind.AUTH, None),
    (fake.ACCOUNT_OVERDUE, Kind.AUTH, None),
    (fake.ACCESS_DENIED, Kind.AUTH, None),
    (fake.MODEL_NOT_OPEN, Kind.AUTH, None),                 # the code outranks the 404
    (fake.MODEL_NOT_FOUND, Kind.UPSTREAM_BROKEN, None),
    (fake.CLOSED_ENDPOINT, Kind.UPSTREAM_BROKEN, None),     # the code outranks the 400
    (fake.INVALID_SIZE, Kind.BAD_REQUEST, None),
    (fake.MISSING_PROMPT, Kind.BAD_REQUEST, None),
    (fake.INPUT_TEXT_SENSITIVE, Kind.CONTENT_BLOCKED, None),
    (fake.INPUT_IMAGE_SENSITIVE, Kind.CONTENT_BLOCKED, None),
    (fake.OUTPUT_IMAGE_SENSITIVE, Kind.CONTENT_BLOCKED, None),
    (fake.INPUT_TEXT_RISK, Kind.CONTENT_BLOCKED, None),
    (fake.RATE_LIMITED, Kind.RATE_LIMITED, 7.0),
    (fake.IPM_LIMITED, Kind.RATE_LIMITED, None),
    (fake.SERVER_OVERLOADED, Kind.OVERLOADED, None),        # the code outranks the 429
    (fake.UNAVAILABLE, Kind.OVERLOADED, 3.0),
    (fake.INTERNAL, Kind.UPSTREAM_BROKEN, None),
    (fake.GATEWAY_HTML, Kind.OVERLOADED, None),
    (Canned(200, fake.OUTPUT_IMAGE_SENSITIVE.body), Kind.CONTENT_BLOCKED, None),
    (Canned(200, {"model": SEEDREAM_4_0, "created": 1, "data": []}), Kind.UPSTREAM_BROKEN, None),
    (Canned(200, {"model": SEEDREAM_4_0, "created": 1}), Kind.UPSTREAM_BROKEN, None),
    (Canned(200, {"data": [{"size": "1024x1024"}]}), Kind.UPSTREAM_BROKEN, None),
    (Canned(200, b"not json", {"content-type": "text/plain"}), Kind.UPSTREAM_BROKEN, None),
])
def test_every_ark_error_maps_to_its_kind(canned: Canned, kind: Kind,
                                          retry_after: float | None) -> None:
    failure = failure_of(ADAPTER, make_request(), route(), FakeBytePlus(script=[canned]))
    assert (failure.kind, failure.retry_after_s) == (kind, retry_after)
    assert failure.status in (canned.status, None)  # None: the 200 held no image
    if isinstance(canned.body, dict) and "error" in canned.body:
        assert f"({canned.body['error']['code']})" in failure.message


def test_error_kinds_option_overrides_the_table() -> None:
    # Ark says a closed endpoint may only be "temporarily unavailable"; an operator may agree.
    options = {"error_kinds": {"InvalidEndpoint.ClosedEndpoint": "overloaded"}}
    failure = failure_of(ADAPTER, make_request(), route(provider_options=options),
                         FakeBytePlus(script=[fake.CLOSED_ENDPOINT]))
    assert failure.kind is Kind.OVERLOADED


def test_a_slow_answer_past_the_deadline_is_a_timeout_and_never_resent() -> None:
    upstream = FakeBytePlus(delay_s=5)
    failure = failure_of(ADAPTER, make_request(), route(), upstream, deadline_s=0.2)
    assert failure.kind is Kind.TIMEOUT and len(upstream.requests) == 1


# --- end to end: openai SDK -> Switchyard -> fake BytePlus ---------------------------------

PROVIDERS = f"""
[byteplus]
protocol = "byteplus"
base_url = "{BASE_URL}"
key_env = "ARK_API_KEY"
timeout_s = 60
allowed_hosts = {list(RESULT_HOSTS)!r}
"""
MODEL = """
name = "{name}"
[capabilities]
aspect_ratios = ["1:1", "3:2", "16:9", "4:1"]
max_n = 4
edits = true
max_reference_images = 14
output_formats = ["png", "jpeg", "webp"]

[[routes]]
provider = "byteplus"
upstream_model = "{upstream}"
price.per_image = {prices}
{options}
"""
MODELS = {
    "seedream-4.0": MODEL.format(name="seedream-4.0", upstream=SEEDREAM_4_0, options="",
                                 prices='{ "1K" = 0.03, "2K" = 0.03, "4K" = 0.03 }'),
    # URL results, and a size table that only raises the floor.
    "seedream-4.5": MODEL.format(name="seedream-4.5", upstream=SEEDREAM_4_5,
                                 prices='{ "2K" = 0.04, "4K" = 0.04 }',
                                 options='options = { response_format = "url", '
                                         'arbitrary_sizes = { min_pixels = 3686400 } }'),
}


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS, MODELS,
                                {"ARK_API_KEY": "test-key"})
    with kit.switchyard(tmp_path, "byteplus", catalog) as start:
        yield start


def test_e2e_generate_two_images_converted_to_png(switchyard: Start,
                                                  validate: Callable[[str, Any], None]) -> None:
    upstream = FakeBytePlus()
    sdk = switchyard(upstream)
    raw = sdk.images.with_raw_response.generate(model="seedream-4.0", prompt="a red fox", n=2,
                                                size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "byteplus"
    assert raw.headers["x-switchyard-cost-usd"] == "0.060000"
    assert raw.headers["x-switchyard-converted"] == "image/jpeg -> image/png"
    assert raw.headers["x-switchyard-size"] == "1536x1024"
    items = raw.parse().data or []
    assert len(items) == 2 and len(upstream.requests) == 2
    for item in items:
        picture = decoded(item.b64_json or "")
        assert (picture.format, picture.size) == ("PNG", (1536, 1024))
    assert {s.json["size"] for s in upstream.requests} == {"1536x1024"}


def test_e2e_jpeg_passes_through_with_arks_usage(switchyard: Start,
                                                 validate: Callable[[str, Any], None]) -> None:
    sdk = switchyard(FakeBytePlus())
    raw = sdk.images.with_raw_response.generate(model="seedream-4.0", prompt="a red fox",
                                                size="1024x1024", output_format="jpeg")
    body = raw.http_response.json()
    validate("ImagesResponse", body)
    assert "x-switchyard-converted" not in raw.headers
    assert body["output_format"] == "jpeg" and body["usage"]["output_tokens"] == 4096
    assert base64.b64decode(body["data"][0]["b64_json"]) == image_bytes(
        1024, 1024, "jpeg", "a red fox|0")


@pytest.mark.parametrize(("size", "delivered", "adjusted"), [
    ("4096x1024", "4096x1024", None),
    ("1024x1024", "1920x1920", "requested=1024x1024; delivered=1920x1920"),
])
def test_e2e_seedream_4_5_url_results_and_its_size_floor(
        switchyard: Start, size: str, delivered: str, adjusted: str | None) -> None:
    upstream = FakeBytePlus()
    sdk = switchyard(upstream)
    raw = sdk.images.with_raw_response.generate(model="seedream-4.5", prompt="a red fox",
                                                size=size)
    assert raw.headers["x-switchyard-size"] == delivered
    assert raw.headers.get("x-switchyard-size-adjusted") == adjusted
    assert [(s.method, s.url.host) for s in upstream.requests] == [("POST", API_HOST),
                                                                   ("GET", FILES_HOST)]
    (item,) = raw.parse().data or []
    assert decoded(item.b64_json or "").size == geometry.parse_size(delivered)


def test_e2e_edit_sends_the_upload_as_a_data_url(switchyard: Start) -> None:
    upstream = FakeBytePlus()
    sdk = switchyard(upstream)
    upload = image_bytes(32, 32, "png", "red")
    result = sdk.images.edit(model="seedream-4.0", prompt="make it blue",
                             image=("red.png", upload, "image/png"))
    assert result.data and result.data[0].b64_json
    assert upstream.requests[0].json["image"] == kit.data_uri(upload)


@pytest.mark.parametrize(("canned", "delay_s", "status", "code", "words", "retry_after"), [
    (fake.OUTPUT_IMAGE_SENSITIVE, 0, 400, "moderation_blocked",
     "upstream refused the content (OutputImageSensitiveContentDetected): The request failed "
     "because the output image may contain sensitive information.", None),
    (fake.RATE_LIMITED, 0, 429, "upstream_rate_limited", "(RateLimitExceeded.EndpointRPMExceeded)",
     "7"),
    (None, 5, 504, "upstream_timeout", "ReadTimeout", None),  # past Switchyard's 0.3 s
])
def test_e2e_upstream_errors_reach_the_sdk_in_openais_shape(
        switchyard: Start, validate: Callable[[str, Any], None], canned: Canned | None,
        delay_s: float, status: int, code: str, words: str, retry_after: str | None) -> None:
    upstream = FakeBytePlus(script=[canned] if canned else [], delay_s=delay_s)
    sdk = switchyard(upstream, request_timeout_s=0.3)
    answered, body, after = kit.error_of(sdk, validate, "seedream-4.0", "something unsafe")
    assert (answered, body["error"]["code"]) == (status, code)
    assert words in body["error"]["message"]
    assert after == retry_after
    assert len(upstream.requests) == 1  # a submit is never re-sent
