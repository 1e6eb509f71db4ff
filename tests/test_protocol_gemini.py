"""The `gemini` protocol against a fake Gemini API: exact requests, results, every error shape,
and end to end through the official openai SDK."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image as PILImage

from proxy import geometry
from proxy.domain import Geometry, InputImage, Usage
from proxy.failures import Kind
from proxy.providers import gemini
from proxy.providers.base import UpstreamReply
from tests import protocol_kit as kit
from tests.fakes.gemini import (
    GEMINI_BASE,
    FakeGemini,
    attempt,
    failure,
    make_request,
    make_route,
)
from tests.protocol_kit import decoded

ADAPTER = gemini.ADAPTER
URL = f"{GEMINI_BASE}/models/gemini-3.1-flash-image:generateContent"


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


# --- Requests and results -----------------------------------------------------------------


def test_generate_sends_the_documented_request_and_parses_the_image() -> None:
    fake = FakeGemini()
    result = attempt(ADAPTER, make_request(), make_route(), fake)
    (seen,) = fake.seen
    assert (seen.method, str(seen.url)) == ("POST", URL)
    assert seen.headers["x-goog-api-key"] == "test-key"
    assert "authorization" not in seen.headers
    assert seen.headers["content-type"] == "application/json"
    assert seen.json == {
        "contents": [{"role": "user", "parts": [{"text": "a lighthouse at dawn"}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "candidateCount": 1,
                             "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}},
    }
    (image,) = result.images
    assert image.mime == "image/png"
    width, height = geometry.pixels("16:9", "2K")
    assert decoded(image.b64).size == (width, height)
    assert result.size == f"{width}x{height}"
    assert result.upstream_id == "resp-image"
    assert result.usage == Usage(input_tokens=4, output_tokens=1680 + 5,
                                 input_image_tokens=0, output_image_tokens=1680)


def test_base64_is_passed_through_untouched() -> None:
    fake = FakeGemini()
    result = attempt(ADAPTER, make_request(), make_route(), fake)
    data, _, _ = fake.image_for("gemini-3.1-flash-image", fake.seen[0].json)
    assert result.images[0].b64 == base64.b64encode(data).decode()


def test_half_k_tier_is_spelled_512_and_the_spelling_is_route_data() -> None:
    fake = FakeGemini()
    request = make_request(geometry=Geometry("1:8", "0.5K", None, "aspect_ratio"))
    attempt(ADAPTER, request, make_route(), fake)
    assert fake.seen[0].json["generationConfig"]["imageConfig"] == {"aspectRatio": "1:8",
                                                                    "imageSize": "512"}
    route = make_route(options={"image_sizes": {"0.5K": "0.5K"}})
    assert failure(ADAPTER, request, route, fake).kind is Kind.BAD_REQUEST
    assert fake.seen[1].json["generationConfig"]["imageConfig"]["imageSize"] == "0.5K"


def test_nano_banana_route_sends_no_image_size() -> None:
    fake = FakeGemini()
    route = make_route("gemini-2.5-flash-image", options={"image_sizes": {}})
    request = make_request(geometry=Geometry("16:9", "1K", None, "size"))
    result = attempt(ADAPTER, request, route, fake)
    assert fake.seen[0].json["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9"}
    assert result.size == "1344x768"
    assert result.usage is not None and result.usage.output_image_tokens == 1290
    # Without the route option the size goes out, and the (strict) fake refuses it.
    assert failure(ADAPTER, request, make_route("gemini-2.5-flash-image"),
                   fake).kind is Kind.BAD_REQUEST


def test_options_come_from_route_then_provider() -> None:
    fake = FakeGemini()
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    route = make_route(options={"response_modalities": ["TEXT", "IMAGE"]},
                       provider_options={"response_modalities": ["AUDIO"],
                                         "safety_settings": safety})
    attempt(ADAPTER, make_request(seed=42), route, fake)
    sent = fake.seen[0].json
    assert sent["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]
    assert sent["generationConfig"]["seed"] == 42
    assert sent["safetySettings"] == safety


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_a_lane_of_the_gemini_api_is_its_service_tier(tier: str) -> None:
    # Issue 22.3: Gemini's Flex (half price, minutes) and Priority (dearer, faster) lanes are
    # the same call with the request body's service tier; the provider says which.
    fake = FakeGemini()
    attempt(ADAPTER, make_request(), make_route(provider_options={"service_tier": tier}), fake)
    assert fake.seen[0].json["serviceTier"] == tier
    plain = FakeGemini()
    attempt(ADAPTER, make_request(), make_route(), plain)
    assert "serviceTier" not in plain.seen[0].json


def test_edit_sends_reference_images_inline_before_the_prompt() -> None:
    fake = FakeGemini()
    first, second = png(300, 200), png(64, 64)
    request = make_request(kind="edit", prompt="put the cup on the table",
                           geometry=Geometry("1:1", "1K", None, "default"),
                           images=(InputImage("image/png", data=first),
                                   InputImage("image/png", data=second)))
    result = attempt(ADAPTER, request, make_route(), fake)
    parts = fake.seen[0].json["contents"][0]["parts"]
    assert parts == [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(first).decode()}},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(second).decode()}},
        {"text": "put the cup on the table"},
    ]
    # No shape asked for: no aspectRatio, so the model keeps the first image's 3:2.
    assert fake.seen[0].json["generationConfig"]["imageConfig"] == {"imageSize": "1K"}
    assert decoded(result.images[0].b64).size == geometry.pixels("3:2", "1K")


def test_an_asked_shape_wins_over_the_reference_ratio() -> None:
    fake = FakeGemini()
    request = make_request(kind="edit", geometry=Geometry("9:16", "1K", None, "aspect_ratio"),
                           images=(InputImage("image/png", data=png(300, 200)),))
    attempt(ADAPTER, request, make_route(), fake)
    assert fake.seen[0].json["generationConfig"]["imageConfig"]["aspectRatio"] == "9:16"


def test_reference_urls_go_as_file_data_or_are_refused_by_route_option() -> None:
    fake = FakeGemini()
    request = make_request(images=(
        InputImage("application/octet-stream", url="https://cdn.example.com/a/cat.png?sig=1"),
        InputImage("application/octet-stream", url="https://cdn.example.com/b/raw")))
    attempt(ADAPTER, request, make_route(), fake)
    assert fake.seen[0].json["contents"][0]["parts"][:2] == [
        {"fileData": {"mimeType": "image/png",
                      "fileUri": "https://cdn.example.com/a/cat.png?sig=1"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://cdn.example.com/b/raw"}},
    ]
    refused = failure(ADAPTER, request, make_route(options={"reference_urls": "reject"}), fake)
    assert refused.kind is Kind.BAD_REQUEST
    assert refused.message == "this route cannot take reference images by URL"
    assert len(fake.seen) == 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"mask": InputImage("image/png", data=b"\x89PNG")}, "cannot take a mask"),
    ({"background": "transparent"}, "cannot make transparent backgrounds"),
])
def test_what_gemini_cannot_express_is_refused_before_any_call(changes: dict[str, Any],
                                                                message: str) -> None:
    fake = FakeGemini()
    refused = failure(ADAPTER, make_request(**changes), make_route(), fake)
    assert refused.kind is Kind.BAD_REQUEST and message in refused.message
    assert fake.seen == []


def test_thought_images_are_skipped_and_thinking_counts_as_output() -> None:
    fake = FakeGemini().then("thoughts")
    result = attempt(ADAPTER, make_request(), make_route("gemini-3-pro-image"), fake)
    (image,) = result.images
    assert decoded(image.b64).size == geometry.pixels("16:9", "2K")
    assert result.usage is not None
    assert (result.usage.output_tokens, result.usage.output_image_tokens) == \
        (1120 + 5 + 212, 1120)


def test_n_runs_parallel_single_image_calls() -> None:
    fake = FakeGemini()
    assert ADAPTER.images_per_call == 1
    result = attempt(ADAPTER, make_request(n=3), make_route(), fake)
    assert len(result.images) == 3 and len(fake.seen) == 3
    single = attempt(ADAPTER, make_request(n=1), make_route(), FakeGemini())
    assert single.usage is not None and result.usage is not None
    assert result.usage.output_image_tokens == 3 * single.usage.output_image_tokens
    assert all(s.json["generationConfig"]["candidateCount"] == 1 for s in fake.seen)


def test_reference_images_count_as_input_image_tokens() -> None:
    fake = FakeGemini()
    request = make_request(images=(InputImage("image/png", data=png(32, 32)),))
    result = attempt(ADAPTER, request, make_route(), fake)
    assert result.usage is not None and result.usage.input_image_tokens == 560


# --- Failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "kind", "retry_after", "status"), [
    ("text_only", Kind.CONTENT_BLOCKED, None, 200),
    ("image_safety", Kind.CONTENT_BLOCKED, None, 200),
    ("prohibited", Kind.CONTENT_BLOCKED, None, 200),
    ("no_image", Kind.CONTENT_BLOCKED, None, 200),
    ("prompt_blocked", Kind.CONTENT_BLOCKED, None, 200),
    ("other", Kind.UPSTREAM_BROKEN, None, 200),
    ("not_json", Kind.UPSTREAM_BROKEN, None, 200),
    ("rate_limited", Kind.RATE_LIMITED, 53.0, 429),
    ("daily_quota", Kind.RATE_LIMITED, 3600.0, 429),
    ("retry_header", Kind.RATE_LIMITED, 7.0, 429),
    ("overloaded", Kind.OVERLOADED, None, 503),
    ("internal", Kind.UPSTREAM_BROKEN, None, 500),
    ("deadline", Kind.TIMEOUT, None, 504),
    ("precondition", Kind.AUTH, None, 400),
    ("bad_gateway_html", Kind.OVERLOADED, None, 502),
])
def test_every_error_shape_maps_to_its_class(scenario: str, kind: Kind,
                                             retry_after: float | None,
                                             status: int) -> None:
    fake = FakeGemini().then(scenario)
    got = failure(ADAPTER, make_request(), make_route(), fake)
    assert (got.kind, got.retry_after_s, got.status) == (kind, retry_after, status)
    assert "http" not in got.message and "test-key" not in got.message
    assert len(fake.seen) == 1  # a submit is never re-sent


def test_blocked_messages_say_why() -> None:
    fake = FakeGemini().then("prompt_blocked", "image_safety", "text_only")
    messages = [failure(ADAPTER, make_request(), make_route(), fake).message for _ in range(3)]
    assert messages == ["the prompt was blocked (PROHIBITED_CONTENT)",
                        "the model produced no image (IMAGE_SAFETY)",
                        "the model answered without an image: "
                        "I can't create images of real people."]


def test_wrong_key_is_auth_and_never_echoed() -> None:
    fake = FakeGemini(api_key="the-right-key")
    got = failure(ADAPTER, make_request(), make_route(key="a-wrong-key"), fake)
    assert (got.kind, got.status) == (Kind.AUTH, 400)
    assert "a-wrong-key" not in got.message


def test_missing_key_fails_before_sending() -> None:
    fake = FakeGemini()
    got = failure(ADAPTER, make_request(), make_route(key=None), fake)
    assert got.kind is Kind.AUTH and "google" in got.message
    assert fake.seen == []


def test_unknown_arguments_are_the_clients_bad_request_with_googles_reason() -> None:
    fake = FakeGemini()
    request = make_request(geometry=Geometry("1:8", "1K", None, "aspect_ratio"))
    got = failure(ADAPTER, request, make_route("gemini-3-pro-image"), fake)
    assert (got.kind, got.status) == (Kind.BAD_REQUEST, 400)
    assert got.message == "upstream rejected the request: Unsupported aspect ratio: 1:8"


def test_retired_model_id_is_a_broken_route_not_a_client_error() -> None:
    fake = FakeGemini()
    got = failure(ADAPTER, make_request(), make_route("gemini-3.1-flash-image-preview"), fake)
    assert (got.kind, got.status) == (Kind.UPSTREAM_BROKEN, 404)
    assert got.retryable


def test_slow_upstream_hits_the_deadline() -> None:
    fake = FakeGemini(delay_s=5.0)
    got = failure(ADAPTER, make_request(), make_route(), fake, deadline_s=0.2)
    assert got.kind is Kind.TIMEOUT
    assert len(fake.seen) == 1


def _reply_from(fake: FakeGemini, headers: dict[str, str]) -> UpstreamReply:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=fake) as client:
            return await client.post(URL, headers=headers, json={})
    response = asyncio.run(go())
    return UpstreamReply(response.status_code, response.headers, response.content)


def test_classify_reads_googles_auth_errors() -> None:
    missing = _reply_from(FakeGemini(), {})
    wrong = _reply_from(FakeGemini(), {"x-goog-api-key": "nope"})
    assert (missing.status, wrong.status) == (403, 400)
    assert gemini.classify(missing) is not None
    assert [gemini.classify(r).kind for r in (missing, wrong)] == [Kind.AUTH, Kind.AUTH]


def test_classify_handles_vertex_list_bodies_and_fractional_delays() -> None:
    body = (b'[{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",'
            b' "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",'
            b' "retryDelay": "1.5s"}]}}]')
    got = gemini.classify(UpstreamReply(429, httpx.Headers(), body))
    assert got is not None and (got.kind, got.retry_after_s) == (Kind.RATE_LIMITED, 1.5)
    assert gemini.classify(UpstreamReply(200, httpx.Headers(), b"{}")) is None


def test_a_200_with_a_non_image_part_or_odd_shapes_is_not_a_success() -> None:
    for reply in ({"candidates": "nope"}, {"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "text/plain", "data": "aGk="}}]}}]}, []):
        with pytest.raises(gemini.UpstreamError) as caught:
            gemini.parse(reply)
        assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN


# --- End to end through the openai SDK ----------------------------------------------------

PROVIDERS_TOML = """
[google]
protocol = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"
timeout_s = 180
max_in_flight = 16
"""

MODEL_TOML = """
name = "nano-banana-2"
aliases = ["gemini-3.1-flash-image", "gemini-3.1-flash-image-preview"]
owned_by = "google"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
                 "1:4", "4:1", "1:8", "8:1"]
max_n = 4
edits = true
max_reference_images = 14
output_formats = ["png"]
backgrounds = ["auto", "opaque"]

[[routes]]
provider = "google"
upstream_model = "gemini-3.1-flash-image"
typical_latency_s = 12
options = { usd_per_million_output_image_tokens = 60 }
price.per_image = { "0.5K" = 0.04482, "1K" = 0.0672, "2K" = 0.1008, "4K" = 0.1512 }
"""


@pytest.fixture
def google(tmp_path: Path) -> Iterator[tuple[openai.OpenAI, FakeGemini]]:
    """An SDK client on a real Switchyard whose google provider is the fake, and the fake."""
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML, {"nano-banana-2": MODEL_TOML},
                                {"GEMINI_API_KEY": "test-key"})
    fake = FakeGemini()
    with kit.switchyard(tmp_path, "google", catalog) as start:
        yield start(fake), fake


def test_sdk_generate_through_gemini(google: tuple[openai.OpenAI, FakeGemini],
                                     validate: Callable[[str, Any], None]) -> None:
    sdk, fake = google
    raw = sdk.images.with_raw_response.generate(
        model="gemini-3.1-flash-image-preview", prompt="a red fox", size="1536x1024", n=2)
    validate("ImagesResponse", raw.http_response.json())
    result = raw.parse()
    assert len(result.data) == 2 and len(fake.seen) == 2
    for item in result.data:
        image = decoded(item.b64_json or "")
        assert (image.format, image.size) == ("PNG", geometry.pixels("3:2", "1K"))
    assert raw.headers["x-switchyard-provider"] == "google"
    assert raw.headers["x-switchyard-upstream-model"] == "gemini-3.1-flash-image"
    assert raw.headers["x-switchyard-cost-usd"] == "0.134400"
    assert fake.seen[0].json["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2",
                                                                    "imageSize": "1K"}


def test_sdk_sees_a_refusal_as_moderation_blocked(google: tuple[openai.OpenAI, FakeGemini],
                                                  validate: Callable[[str, Any], None]) -> None:
    sdk, fake = google
    fake.then("image_safety")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="nano-banana-2", prompt="something it will not draw")
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "moderation_blocked"
    assert "IMAGE_SAFETY" in body["error"]["message"]


def test_sdk_sees_quota_as_429_with_retry_after(google: tuple[openai.OpenAI, FakeGemini],
                                                validate: Callable[[str, Any], None]) -> None:
    sdk, fake = google
    fake.then("rate_limited")
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.images.generate(model="nano-banana-2", prompt="x")
    validate("ErrorResponse", caught.value.response.json())
    assert caught.value.response.headers["retry-after"] == "53"
