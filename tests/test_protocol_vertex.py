"""The `vertex` protocol against a fake Vertex AI: URLs by project and location, express mode,
bearer tokens (also from a token command), native JPEG output, errors, and end to end."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy import geometry
from proxy.failures import Kind
from proxy.providers import gemini, vertex
from proxy.upstream.credentials import Credentials
from tests import protocol_kit as kit
from tests.fakes.gemini import FakeGemini, attempt, failure, make_request, make_route
from tests.protocol_kit import decoded

ADAPTER = vertex.ADAPTER
MODEL_PATH = "publishers/google/models/gemini-3.1-flash-image:generateContent"
PROJECT = {"project": "proj-1", "location": "global", "auth": "bearer"}


def test_global_project_path_with_a_bearer_token() -> None:
    fake = FakeGemini(vertex=True)
    route = make_route(protocol="vertex", key="tok-1", provider_options=PROJECT)
    result = attempt(ADAPTER, make_request(), route, fake)
    (seen,) = fake.seen
    assert str(seen.url) == ("https://aiplatform.googleapis.com/v1/projects/proj-1/locations/"
                             f"global/{MODEL_PATH}")
    assert seen.headers["authorization"] == "Bearer tok-1"
    assert "x-goog-api-key" not in seen.headers
    # The very body the Gemini API gets: one builder serves both.
    assert seen.json == gemini.body(make_request(), route)
    assert decoded(result.images[0].b64).size == geometry.pixels("16:9", "2K")
    assert result.usage is not None and result.usage.output_image_tokens == 1680


def test_regional_host_and_location_are_data() -> None:
    fake = FakeGemini(vertex=True, location="us-central1", project="acme-prod")
    route = make_route(
        "gemini-3-pro-image", protocol="vertex", key="tok-1",
        base_url="https://us-central1-aiplatform.googleapis.com/v1",
        provider_options={"project": "acme-prod", "location": "us-central1", "auth": "bearer"})
    attempt(ADAPTER, make_request(), route, fake)
    assert str(fake.seen[0].url) == (
        "https://us-central1-aiplatform.googleapis.com/v1/projects/acme-prod/locations/"
        "us-central1/publishers/google/models/gemini-3-pro-image:generateContent")


def test_express_mode_uses_the_api_key_and_no_project() -> None:
    fake = FakeGemini(vertex=True, api_key="express-key")
    route = make_route(protocol="vertex", key="express-key")
    attempt(ADAPTER, make_request(), route, fake)
    (seen,) = fake.seen
    assert str(seen.url) == f"https://aiplatform.googleapis.com/v1/{MODEL_PATH}"
    assert seen.headers["x-goog-api-key"] == "express-key"
    assert "authorization" not in seen.headers


def test_bearer_without_a_project_is_a_configuration_error() -> None:
    fake = FakeGemini(vertex=True)
    got = failure(ADAPTER, make_request(), make_route(protocol="vertex", key="tok-1",
                                                      provider_options={"auth": "bearer"}), fake)
    assert got.kind is Kind.AUTH and "project" in got.message
    assert fake.seen == []


def test_jpeg_is_asked_of_vertex_natively() -> None:
    fake = FakeGemini(vertex=True)
    route = make_route(protocol="vertex", key="tok-1", provider_options=PROJECT)
    result = attempt(ADAPTER, make_request(output_format="jpeg", output_compression=80), route,
                     fake)
    assert fake.seen[0].json["generationConfig"]["imageConfig"] == {
        "aspectRatio": "16:9", "imageSize": "2K",
        "imageOutputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80}}
    assert result.images[0].mime == "image/jpeg"
    assert decoded(result.images[0].b64).format == "JPEG"


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_other_formats_come_back_as_png(fmt: str) -> None:
    fake = FakeGemini(vertex=True)
    route = make_route(protocol="vertex", key="tok-1", provider_options=PROJECT)
    result = attempt(ADAPTER, make_request(output_format=fmt), route, fake)
    assert "imageOutputOptions" not in fake.seen[0].json["generationConfig"]["imageConfig"]
    assert result.images[0].mime == "image/png"


def test_native_formats_are_route_data() -> None:
    fake = FakeGemini(vertex=True)
    route = make_route(protocol="vertex", key="tok-1", provider_options=PROJECT,
                       options={"native_output_formats": ["png"]})
    attempt(ADAPTER, make_request(output_format="jpeg"), route, fake)
    assert "imageOutputOptions" not in fake.seen[0].json["generationConfig"]["imageConfig"]


def test_the_gemini_api_itself_never_gets_output_options() -> None:
    fake = FakeGemini()  # the Gemini API fake refuses imageOutputOptions, like Google does
    result = attempt(gemini.ADAPTER, make_request(output_format="jpeg"), make_route(), fake)
    assert result.images[0].mime == "image/png"


@pytest.mark.parametrize(("scenario", "kind", "retry_after"), [
    ("rate_limited", Kind.RATE_LIMITED, 53.0),
    ("overloaded", Kind.OVERLOADED, None),
    ("image_safety", Kind.CONTENT_BLOCKED, None),
    ("prompt_blocked", Kind.CONTENT_BLOCKED, None),
    ("internal", Kind.UPSTREAM_BROKEN, None),
])
def test_vertex_errors_share_gemini_classes(scenario: str, kind: Kind,
                                            retry_after: float | None) -> None:
    fake = FakeGemini(vertex=True).then(scenario)
    route = make_route(protocol="vertex", key="tok-1", provider_options=PROJECT)
    got = failure(ADAPTER, make_request(), route, fake)
    assert (got.kind, got.retry_after_s) == (kind, retry_after)


def test_a_refused_token_is_auth() -> None:
    fake = FakeGemini(vertex=True, tokens={"the-good-token"})
    route = make_route(protocol="vertex", key="stale-token", provider_options=PROJECT)
    got = failure(ADAPTER, make_request(), route, fake)
    assert (got.kind, got.status) == (Kind.AUTH, 401)
    assert "stale-token" not in got.message


def test_an_unknown_auth_style_is_refused() -> None:
    route = make_route(protocol="vertex", key="k", provider_options={"auth": "basic"})
    got = failure(ADAPTER, make_request(), route, FakeGemini(vertex=True))
    assert got.kind is Kind.AUTH and "auth must be" in got.message


# --- Token command through flows.generate -------------------------------------------------


def counting_command(tmp_path: Path) -> str:
    """A shell command printing tok-1, tok-2, ... on successive runs."""
    counter = tmp_path / "count"
    counter.write_text("0")
    path = shlex.quote(str(counter))
    return f"n=$(($(cat {path}) + 1)); echo $n > {path}; echo tok-$n"


def token_route(command: str) -> Any:
    return make_route(protocol="vertex", key=None,
                      provider_options={"project": "proj-1", "token_command": command})


def test_token_command_supplies_the_bearer_token(tmp_path: Path) -> None:
    route = token_route(counting_command(tmp_path))
    credentials = Credentials.for_providers([route.provider])
    fake = FakeGemini(vertex=True, tokens={"tok-1"})
    result = attempt(ADAPTER, make_request(n=2), route, fake, credentials=credentials)
    assert len(result.images) == 2
    assert [s.headers["authorization"] for s in fake.seen] == ["Bearer tok-1"] * 2
    # Cached: the command ran once for both calls.
    assert (tmp_path / "count").read_text().strip() == "1"


def test_a_refused_token_is_fetched_again_next_time(tmp_path: Path) -> None:
    route = token_route(counting_command(tmp_path))
    credentials = Credentials.for_providers([route.provider])
    fake = FakeGemini(vertex=True, tokens={"tok-2"})
    assert failure(ADAPTER, make_request(), route, fake,
                   credentials=credentials).kind is Kind.AUTH
    result = attempt(ADAPTER, make_request(), route, fake, credentials=credentials)
    assert len(result.images) == 1
    assert [s.headers["authorization"] for s in fake.seen] == ["Bearer tok-1", "Bearer tok-2"]


def test_a_failing_token_command_is_auth_without_a_call() -> None:
    route = token_route("echo not-for-your-eyes; exit 3")
    credentials = Credentials.for_providers([route.provider])
    fake = FakeGemini(vertex=True)
    got = failure(ADAPTER, make_request(), route, fake, credentials=credentials)
    assert got.kind is Kind.AUTH and "not-for-your-eyes" not in got.message
    assert fake.seen == []


def test_without_credentials_generate_is_unchanged() -> None:
    fake = FakeGemini(vertex=True)
    route = make_route(protocol="vertex", key="tok-1", provider_options=PROJECT)
    result = attempt(ADAPTER, make_request(n=2), route, fake, credentials=Credentials({}))
    assert len(result.images) == 2
    assert fake.seen[0].headers["authorization"] == "Bearer tok-1"


# --- End to end through the openai SDK ----------------------------------------------------

PROVIDERS_TOML = """
[vertex-global]
protocol = "vertex"
base_url = "https://aiplatform.googleapis.com/v1"
key_env = "VERTEX_ACCESS_TOKEN"
timeout_s = 180
max_in_flight = 16
options = { project = "proj-1", location = "global", auth = "bearer" }
"""

MODEL_TOML = """
name = "nano-banana-pro"
aliases = ["gemini-3-pro-image", "gemini-3-pro-image-preview"]
owned_by = "google"

[capabilities]
aspect_ratios = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
max_n = 4
edits = true
max_reference_images = 14
output_formats = ["png", "jpeg"]
backgrounds = ["auto", "opaque"]

[[routes]]
provider = "vertex-global"
upstream_model = "gemini-3-pro-image"
typical_latency_s = 20
options = { usd_per_million_output_image_tokens = 120 }
price.per_image = { "1K" = 0.1344, "2K" = 0.1344, "4K" = 0.24 }
"""


@pytest.fixture
def google(tmp_path: Path) -> Iterator[tuple[openai.OpenAI, FakeGemini]]:
    """An SDK client on a real Switchyard whose vertex-global is the fake, and the fake."""
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-pro": MODEL_TOML}, {"VERTEX_ACCESS_TOKEN": "tok-1"})
    fake = FakeGemini(vertex=True)
    with kit.switchyard(tmp_path, "vertex-global", catalog) as start:
        yield start(fake), fake


def test_sdk_generate_jpeg_through_vertex(google: tuple[openai.OpenAI, FakeGemini],
                                          validate: Callable[[str, Any], None]) -> None:
    sdk, fake = google
    raw = sdk.images.with_raw_response.generate(
        model="gemini-3-pro-image-preview", prompt="a red fox", size="1024x1024",
        output_format="jpeg")
    validate("ImagesResponse", raw.http_response.json())
    result = raw.parse()
    image = decoded(result.data[0].b64_json or "")
    assert (image.format, image.size) == ("JPEG", (1024, 1024))
    assert result.output_format == "jpeg" and result.size == "1024x1024"
    assert raw.headers["x-switchyard-provider"] == "vertex-global"
    assert raw.headers["x-switchyard-cost-usd"] == "0.134400"
    assert fake.seen[0].headers["authorization"] == "Bearer tok-1"


def test_sdk_sees_overload_as_503(google: tuple[openai.OpenAI, FakeGemini],
                                  validate: Callable[[str, Any], None]) -> None:
    sdk, fake = google
    fake.then("overloaded")
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(model="nano-banana-pro", prompt="x")
    assert caught.value.status_code == 503
    validate("ErrorResponse", caught.value.response.json())
    assert caught.value.response.json()["error"]["code"] == "upstream_overloaded"
