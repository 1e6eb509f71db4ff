"""The together protocol against a fake Together AI: exact requests, real images, every error
shape, and end to end through the official openai SDK."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog import Catalog, Route
from proxy.domain import ImageRequest, ImageResult, InputImage
from proxy.failures import Failure, Kind
from proxy.providers.together import ADAPTER
from tests import protocol_kit as kit
from tests.fakes import openai_images as shared
from tests.fakes import together as fake
from tests.fakes.openai_images import Canned, image_bytes, make_request
from tests.fakes.together import API_HOST, BASE_URL, FILES_HOST, GOOGLE_SIZES, FakeTogether
from tests.protocol_kit import Start, decoded

SIZES = {tier: list(sizes) for tier, sizes in GOOGLE_SIZES.items()}


def route(model: str = "google/gemini-3-pro-image", key: str | None = "test-key",
          allowed_hosts: tuple[str, ...] = (FILES_HOST,), **options: Any) -> Route:
    return shared.make_route("together", BASE_URL, upstream_model=model, key=key,
                             allowed_hosts=allowed_hosts, options={"sizes": SIZES, **options})


def run(upstream: FakeTogether, request: ImageRequest, to: Route | None = None,
        deadline_s: float = 10.0) -> ImageResult:
    return shared.run(ADAPTER, request, to or route(), upstream, deadline_s)


def failure_of(upstream: FakeTogether, request: ImageRequest, to: Route | None = None,
               deadline_s: float = 10.0) -> Failure:
    return shared.failure_of(ADAPTER, request, to or route(), upstream, deadline_s)


# --- requests and results ------------------------------------------------------------------


def test_generation_sends_the_exact_request_and_returns_the_real_image() -> None:
    upstream = FakeTogether()
    result = run(upstream, make_request("a banana astronaut", ratio="16:9", seed=7))
    (seen,) = upstream.requests
    assert (seen.method, str(seen.url)) == ("POST", f"{BASE_URL}/images/generations")
    assert seen.headers["authorization"] == "Bearer test-key"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json == {"model": "google/gemini-3-pro-image", "prompt": "a banana astronaut",
                         "n": 1, "width": 1344, "height": 768, "response_format": "base64",
                         "output_format": "png", "seed": 7}
    (image,) = result.images
    assert image.mime == "image/png"
    assert base64.b64decode(image.b64) == FakeTogether.image_for(seen.json, 0)
    picture = decoded(image.b64)
    assert (picture.format, picture.size) == ("PNG", (1344, 768))
    assert result.size == "1344x768"
    assert result.upstream_id is not None and result.upstream_id.endswith("-SJC")
    assert result.usage is None


@pytest.mark.parametrize(("asked", "sent", "pil"), [
    ("jpeg", "jpeg", "JPEG"),
    # Together makes only jpeg or png: webp is asked as png, and Switchyard converts it.
    ("webp", "png", "PNG"),
])
def test_output_format_is_one_together_makes(asked: str, sent: str, pil: str) -> None:
    upstream = FakeTogether()
    result = run(upstream, make_request(output_format=asked))
    assert upstream.requests[0].json["output_format"] == sent
    assert result.images[0].mime == f"image/{sent}"
    assert (decoded(result.images[0].b64).format, result.size) == (pil, "1024x1024")


@pytest.mark.parametrize(("shape", "sent"), [
    ({"ratio": "16:9", "tier": "2K"}, (2688, 1536)),
    ({"ratio": "9:16", "tier": "4K"}, (3072, 5376)),
    ({"ratio": "3:2"}, (1248, 832)),
    ({"size": "1000x1000"}, (1024, 1024)),
    ({"size": "1536x1024"}, (1248, 832)),
    ({"ratio": "21:9"}, (1536, 672)),
])
def test_the_size_sent_is_the_nearest_on_the_models_list(shape: dict[str, str],
                                                         sent: tuple[int, int]) -> None:
    upstream = FakeTogether()
    result = run(upstream, make_request(**shape))
    body = upstream.requests[0].json
    assert (body["width"], body["height"]) == sent
    assert decoded(result.images[0].b64).size == sent
    assert result.size == f"{sent[0]}x{sent[1]}"


def test_a_size_off_the_google_list_is_refused_upstream_as_a_bad_request() -> None:
    # Without the route's `sizes`, 16:9 at 1K is 1360x768, which Together's Google models refuse.
    failure = failure_of(FakeTogether(), make_request(ratio="16:9"), route(sizes=None))
    assert failure.kind is Kind.BAD_REQUEST and failure.status == 400
    assert "Unsupported dimensions 1360x768" in failure.message


def test_extra_body_passes_steps_and_the_safety_switch_through() -> None:
    upstream = FakeTogether()
    run(upstream, make_request("a nude statue"),
        route(extra_body={"steps": 28, "disable_safety_checker": True}))
    body = upstream.requests[0].json
    assert (body["steps"], body["disable_safety_checker"]) == (28, True)


def test_n_up_to_four_is_one_call_with_indexed_images() -> None:
    upstream = FakeTogether()
    result = run(upstream, make_request(n=3))
    (seen,) = upstream.requests
    assert seen.json["n"] == 3
    assert [base64.b64decode(i.b64) for i in result.images] == [
        FakeTogether.image_for(seen.json, index) for index in range(3)]


def test_n_above_four_runs_parallel_calls_of_at_most_four() -> None:
    upstream = FakeTogether()
    result = run(upstream, make_request(n=6))
    assert sorted(s.json["n"] for s in upstream.requests) == [2, 4]
    assert len(result.images) == 6
    assert len({i.b64 for i in result.images}) == 4  # the two calls repeat one prompt's images


def test_url_results_are_downloaded_from_the_allowed_host_without_the_key() -> None:
    upstream = FakeTogether()
    result = run(upstream, make_request(output_format="jpeg", ratio="4:3"),
                 route(response_format="url"))
    submit, download = upstream.requests
    assert submit.json["response_format"] == "url"
    assert (download.method, download.url.host) == ("GET", FILES_HOST)
    assert "authorization" not in download.headers
    assert base64.b64decode(result.images[0].b64) == upstream.files[download.url.path]
    assert result.images[0].mime == "image/jpeg"
    assert decoded(result.images[0].b64).size == (1184, 864)
    assert result.size == "1184x864"


def test_url_results_on_a_host_not_allowed_are_never_fetched() -> None:
    upstream = FakeTogether()
    failure = failure_of(upstream, make_request(), route(response_format="url", allowed_hosts=()))
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert [s.url.host for s in upstream.requests] == [API_HOST]


def test_an_expired_result_url_is_upstream_broken() -> None:
    upstream = FakeTogether(script=[Canned(200, {"id": "o1", "model": "m", "object": "list",
                                                 "data": [{"index": 0, "type": "url", "url":
                                                           f"https://{FILES_HOST}/v1/images/x"}]})])
    failure = failure_of(upstream, make_request())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "HTTP 404" in failure.message


def test_edit_sends_uploads_as_data_urls_and_urls_as_given_in_reference_images() -> None:
    upstream = FakeTogether()
    upload = image_bytes(32, 32, "png", "ref")
    request = make_request("make it blue", kind="edit", images=(
        InputImage("image/png", data=upload), InputImage("image/jpeg", url="https://x.test/a.jpg")))
    result = run(upstream, request)
    body = upstream.requests[0].json
    assert body["reference_images"] == [
        kit.data_uri(upload), "https://x.test/a.jpg"]
    assert "image_url" not in body
    assert len(result.images) == 1


def test_image_url_routes_send_one_string() -> None:
    upstream = FakeTogether()
    to = route("black-forest-labs/FLUX.1-kontext-pro", reference_field="image_url", sizes=None)
    one = (InputImage("image/png", url="https://x.test/a.png"),)
    run(upstream, make_request(kind="edit", images=one), to)
    assert upstream.requests[0].json["image_url"] == "https://x.test/a.png"
    two = one * 2
    failure = failure_of(upstream, make_request(kind="edit", images=two), to)
    assert failure.kind is Kind.BAD_REQUEST and "one reference image" in failure.message
    assert len(upstream.requests) == 1


def test_a_mask_is_refused_before_any_call() -> None:
    upstream = FakeTogether()
    png = InputImage("image/png", data=image_bytes(8, 8))
    failure = failure_of(upstream, make_request(kind="edit", images=(png,), mask=png))
    assert failure.kind is Kind.BAD_REQUEST and "mask" in failure.message
    assert upstream.requests == []


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("canned", "kind", "retry_after"), [
    (fake.UNAUTHORIZED, Kind.AUTH, None),
    (fake.NO_CREDIT, Kind.AUTH, None),
    (fake.NO_CREDIT_BARE, Kind.AUTH, None),
    (fake.DATA_SHARING_BLOCKED, Kind.AUTH, None),
    (fake.TIER_GATED, Kind.AUTH, None),
    (fake.MODEL_NOT_AVAILABLE, Kind.UPSTREAM_BROKEN, None),
    (fake.CONTENT_POLICY, Kind.CONTENT_BLOCKED, None),
    (fake.NSFW_BARE, Kind.CONTENT_BLOCKED, None),
    (fake.RATE_LIMITED, Kind.RATE_LIMITED, 2.0),
    (fake.SERVER_ERROR, Kind.UPSTREAM_BROKEN, None),
    (fake.OVERLOADED, Kind.OVERLOADED, 3.0),
    (fake.OVERLOADED_BARE, Kind.OVERLOADED, None),
    (fake.GATEWAY_HTML, Kind.OVERLOADED, None),
])
def test_every_error_reply_maps_to_its_kind(canned: Canned, kind: Kind,
                                            retry_after: float | None) -> None:
    failure = failure_of(FakeTogether(script=[canned]), make_request())
    assert failure.kind is kind
    assert failure.retry_after_s == retry_after
    assert failure.status == canned.status
    assert "http" not in failure.message and "together.xyz" not in failure.message


@pytest.mark.parametrize("body", [
    {"id": "o1", "model": "m", "object": "list", "data": []},
    {"id": "o1", "model": "m", "object": "list"},
    {"id": "o1", "model": "m", "object": "list", "data": [{"index": 0, "type": "b64_json"}]},
    {"id": "o1", "model": "m", "object": "list", "data": ["iVBORw0KGgo"]},
    [{"b64_json": "iVBORw0KGgo"}],
    b"<html>not json</html>",
])
def test_a_malformed_success_is_upstream_broken(body: Any) -> None:
    failure = failure_of(FakeTogether(script=[Canned(200, body)]), make_request())
    assert failure.kind is Kind.UPSTREAM_BROKEN


def test_an_unknown_model_slug_is_the_routes_fault_not_the_clients() -> None:
    upstream = FakeTogether()
    failure = failure_of(upstream, make_request(), route("google/flash-image-9"))
    assert (failure.kind, failure.status) == (Kind.UPSTREAM_BROKEN, 404)
    assert "no such model" in failure.message


def test_the_safety_checker_is_content_blocked_with_togethers_words() -> None:
    failure = failure_of(FakeTogether(), make_request("a nude statue"))
    assert (failure.kind, failure.status) == (Kind.CONTENT_BLOCKED, 422)
    assert failure.message.startswith("upstream refused the content: Your request was flagged "
                                      "by the safety checker")
    assert "https" not in failure.message


def test_a_wrong_key_is_auth_and_never_echoed() -> None:
    failure = failure_of(FakeTogether(), make_request(), route(key="tgp_v1_wrong-secret"))
    assert (failure.kind, failure.status) == (Kind.AUTH, 401)
    assert "wrong-secret" not in failure.message and "invalid_api_key" in failure.message


def test_no_key_configured_is_auth_without_a_call() -> None:
    upstream = FakeTogether()
    assert failure_of(upstream, make_request(), route(key=None)).kind is Kind.AUTH
    assert upstream.requests == []


def test_the_error_kinds_option_overrides_the_table() -> None:
    upstream = FakeTogether(script=[fake.MODEL_NOT_AVAILABLE])
    failure = failure_of(upstream, make_request(),
                         route(error_kinds={"model_not_available": "overloaded"}))
    assert failure.kind is Kind.OVERLOADED


def test_a_slow_answer_past_the_deadline_is_a_timeout() -> None:
    upstream = FakeTogether(delay_s=5)
    failure = failure_of(upstream, make_request(), deadline_s=0.2)
    assert failure.kind is Kind.TIMEOUT
    assert len(upstream.requests) == 1  # a submit is never re-sent


# --- end to end: openai SDK -> Switchyard -> fake Together ---------------------------------

PROVIDERS_TOML = f"""
[together]
protocol = "together"
base_url = "{BASE_URL}"
key_env = "TOGETHER_API_KEY"
timeout_s = 60
allowed_hosts = ["{FILES_HOST}"]
"""
MODEL_TOML = """
name = "{name}"
[capabilities]
aspect_ratios = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9"]
max_n = 8
edits = true
max_reference_images = 14
output_formats = ["png", "jpeg"]
[[routes]]
provider = "together"
upstream_model = "{slug}"
price.per_image = {{ "1K" = 0.134, "2K" = 0.134, "4K" = 0.24 }}
options = {{ response_format = "{response_format}", sizes = {sizes} }}
"""


def e2e_catalog(root: Path) -> Catalog:
    sizes = "{ " + ", ".join(f'"{tier}" = {json.dumps(s)}' for tier, s in SIZES.items()) + " }"
    models = {name: MODEL_TOML.format(name=name, slug=slug, response_format=response_format,
                                      sizes=sizes)
              for name, slug, response_format in (
                  ("nano-banana-pro", "google/gemini-3-pro-image", "base64"),
                  ("nano-banana", "google/flash-image-2.5", "url"))}
    return kit.write_catalog(root, PROVIDERS_TOML, models, {"TOGETHER_API_KEY": "test-key"})


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    with kit.switchyard(tmp_path, "together", e2e_catalog(tmp_path / "routes")) as start:
        yield start


def test_e2e_generate_through_the_sdk(switchyard: Start,
                                      validate: Callable[[str, Any], None]) -> None:
    upstream = FakeTogether()
    sdk = switchyard(upstream)
    raw = sdk.images.with_raw_response.generate(model="nano-banana-pro", prompt="a red fox",
                                                n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "together"
    assert raw.headers["x-switchyard-cost-usd"] == "0.268000"
    assert raw.headers["x-switchyard-size-adjusted"] == "requested=1536x1024; delivered=1248x832"
    (seen,) = upstream.requests
    assert seen.json == {"model": "google/gemini-3-pro-image", "prompt": "a red fox", "n": 2,
                         "width": 1248, "height": 832, "response_format": "base64",
                         "output_format": "png"}
    result = raw.parse()
    assert len(result.data) == 2
    images = [decoded(item.b64_json or "") for item in result.data]
    assert {(image.format, image.size) for image in images} == {("PNG", (1248, 832))}


def test_e2e_n_above_four_and_webp_through_the_sdk(
        switchyard: Start) -> None:
    upstream = FakeTogether()
    sdk = switchyard(upstream)
    raw = sdk.images.with_raw_response.generate(model="nano-banana-pro", prompt="tiles", n=6,
                                                size="1024x1024", output_format="webp")
    assert sorted(s.json["n"] for s in upstream.requests) == [2, 4]
    assert {s.json["output_format"] for s in upstream.requests} == {"png"}
    assert raw.headers["x-switchyard-converted"] == "image/png -> image/webp"
    result = raw.parse()
    assert len(result.data) == 6
    assert {decoded(i.b64_json or "").format for i in result.data} == {"WEBP"}


def test_e2e_url_results_are_fetched_and_returned_inline(
        switchyard: Start,
        validate: Callable[[str, Any], None]) -> None:
    upstream = FakeTogether()
    sdk = switchyard(upstream)
    raw = sdk.images.with_raw_response.generate(model="nano-banana", prompt="a lake",
                                                size="1024x1536", output_format="jpeg")
    validate("ImagesResponse", raw.http_response.json())
    submit, download = upstream.requests
    assert submit.json["response_format"] == "url" and download.url.host == FILES_HOST
    image = decoded(raw.parse().data[0].b64_json or "")
    assert (image.format, image.size) == ("JPEG", (832, 1248))


def test_e2e_edit_uploads_the_image_as_a_reference(
        switchyard: Start) -> None:
    upstream = FakeTogether()
    sdk = switchyard(upstream)
    upload = image_bytes(32, 32, "png", "red")
    result = sdk.images.edit(model="nano-banana-pro", prompt="make it blue",
                             image=("red.png", upload, "image/png"))
    assert decoded(result.data[0].b64_json or "").format == "PNG"
    assert upstream.requests[0].json["reference_images"] == [
        kit.data_uri(upload)]


@pytest.mark.parametrize(("script", "prompt", "status", "code", "words", "retry_after"), [
    ([], "a nude statue", 400, "moderation_blocked", "flagged by the safety checker", None),
    ([fake.RATE_LIMITED], "x", 429, "upstream_rate_limited", "rate limit", "2"),
    ([fake.OVERLOADED], "x", 503, "upstream_overloaded", "overloaded", "3"),
    # Out of credit is Switchyard's problem (502), not the client's bad request (400).
    ([fake.NO_CREDIT_BARE], "x", 502, "upstream_auth_failed", "out of credit", None),
])
def test_e2e_errors_are_openai_errors(switchyard: Start,
                                      validate: Callable[[str, Any], None], script: list[Canned],
                                      prompt: str, status: int, code: str, words: str,
                                      retry_after: str | None) -> None:
    sdk = switchyard(FakeTogether(script=list(script)))
    answered, body, after = kit.error_of(sdk, validate, "nano-banana-pro", prompt)
    assert (answered, body["error"]["code"]) == (status, code)
    assert words in body["error"]["message"] and "http" not in body["error"]["message"]
    assert after == retry_after
