"""The replicate protocol against a fake Replicate: exact requests, every state and error shape,
and end to end through the official openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.domain import Geometry, InputImage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.base import Sleep, UpstreamCall, UpstreamReply
from proxy.providers.replicate import ADAPTER, flow
from proxy.providers.upstream import own_host
from tests import protocol_kit as kit
from tests.fakes import replicate as fake_module
from tests.fakes.replicate import BASE_URL, FakeReplicate
from tests.protocol_kit import Start, decoded, make_request

REPLICATE = kit.Upstream("replicate", BASE_URL, "REPLICATE_API_TOKEN", ("replicate.delivery",),
                         "google/nano-banana-2", "0.067", timeout_s=120)

make_route = REPLICATE.route
run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def test_prefer_wait_success_sends_the_exact_request_and_fetches_bytes() -> None:
    fake = FakeReplicate(wait_finishes=True)
    result = run(fake, make_request(seed=5), make_route())
    create, download = fake.seen
    assert create.method == "POST"
    assert str(create.url) == f"{BASE_URL}/models/google/nano-banana-2/predictions"
    assert create.headers["authorization"] == "Bearer test-key"
    assert create.headers["prefer"] == "wait=60"
    assert create.json == {"input": {"prompt": "a banana astronaut", "aspect_ratio": "16:9",
                                     "resolution": "2K", "output_format": "png"}}
    # The output file is public: the token never goes to replicate.delivery.
    assert download.url.host == "replicate.delivery" and "authorization" not in download.headers
    (image,) = result.images
    prediction = next(iter(fake.predictions.values()))
    assert result.upstream_id == prediction.id
    assert image.mime == "image/png"
    assert base64.b64decode(image.b64) == fake.files[download.url.path]
    assert result.size is None


def test_unfinished_prediction_is_polled_through_its_states_in_order() -> None:
    fake = FakeReplicate(states=("starting", "starting", "processing", "succeeded"))
    result = run(fake, make_request(), make_route())
    methods = [(s.method, s.url.host) for s in fake.seen]
    assert methods == [("POST", "api.replicate.com")] + [("GET", "api.replicate.com")] * 3 + [
        ("GET", "replicate.delivery")]
    prediction = next(iter(fake.predictions.values()))
    polls = fake.seen[1:4]
    assert {str(p.url) for p in polls} == {f"{BASE_URL}/predictions/{prediction.id}"}
    assert all(p.headers["authorization"] == "Bearer test-key" for p in polls)
    assert len(result.images) == 1 and result.upstream_id == prediction.id


def test_data_uri_output_passes_through_untouched() -> None:
    fake = FakeReplicate(wait_finishes=True, output="data")
    result = run(fake, make_request(output_format="jpeg"), make_route())
    assert len(fake.seen) == 1  # nothing to download
    prediction = next(iter(fake.predictions.values()))
    assert prediction.input["output_format"] == "jpg"
    data, _ = FakeReplicate.image_for(prediction.input)
    assert result.images[0].mime == "image/jpeg"
    assert result.images[0].b64 == base64.b64encode(data).decode("ascii")


def test_list_output_is_accepted() -> None:
    fake = FakeReplicate(wait_finishes=True, output="list")
    assert len(run(fake, make_request(), make_route()).images) == 1


def test_n_runs_one_prediction_per_image() -> None:
    fake = FakeReplicate(wait_finishes=True)
    result = run(fake, make_request(n=3), make_route())
    assert len(fake.creates()) == 3 and len(fake.predictions) == 3
    assert len(result.images) == 3


def test_version_pinned_model_posts_to_predictions_with_version() -> None:
    fake = FakeReplicate(wait_finishes=True)
    run(fake, make_request(), make_route({"version": "71516450abc"}))
    create = fake.seen[0]
    assert str(create.url) == f"{BASE_URL}/predictions"
    assert create.json["version"] == "71516450abc" and "model" not in create.json
    assert create.json["input"]["prompt"] == "a banana astronaut"


def test_deployment_route_posts_to_the_deployment() -> None:
    fake = FakeReplicate(wait_finishes=True)
    run(fake, make_request(), make_route({"deployment": True}, model="acme/banana-dep"))
    assert fake.seen[0].url.path == "/v1/deployments/acme/banana-dep/predictions"


def test_field_names_and_constants_are_route_data() -> None:
    fake = FakeReplicate(wait_finishes=True)
    options = {"fields": {"resolution": "", "seed": "seed"},
               "extra_input": {"safety_filter_level": "block_only_high"}}
    run(fake, make_request(seed=42, output_format="webp"), make_route(options))
    assert fake.seen[0].json["input"] == {
        "safety_filter_level": "block_only_high", "prompt": "a banana astronaut",
        "aspect_ratio": "16:9", "output_format": "png", "seed": 42}


def test_short_provider_timeout_shortens_prefer_wait() -> None:
    route = make_route()
    route = replace(route, provider=replace(route.provider, timeout_s=30))
    fake = FakeReplicate(wait_finishes=True)
    run(fake, make_request(), route)
    assert fake.seen[0].headers["prefer"] == "wait=25"


def test_edit_sends_uploaded_bytes_as_data_uris_and_urls_as_given() -> None:
    fake = FakeReplicate(wait_finishes=True)
    request = make_request(kind="edit", geometry=Geometry("1:1", "1K", None, "default"),
                           images=(InputImage("image/png", data=b"\x89PNG-bytes"),
                                   InputImage("image/jpeg", url="https://example.com/a.jpg")))
    run(fake, request, make_route())
    sent = fake.seen[0].json["input"]
    assert sent["image_input"] == [
        "data:image/png;base64," + base64.b64encode(b"\x89PNG-bytes").decode(),
        "https://example.com/a.jpg"]
    assert sent["aspect_ratio"] == "match_input_image"
    assert sent["resolution"] == "1K"


def test_a_mask_is_refused_unless_the_route_sends_it_as_a_reference() -> None:
    mask = InputImage("image/png", data=b"mask")
    request = make_request(kind="edit", images=(InputImage("image/png", data=b"img"),),
                           mask=mask)
    fake = FakeReplicate(wait_finishes=True)
    failure = failure_of(fake, request, make_route())
    assert failure.kind is Kind.BAD_REQUEST and "mask" in failure.message
    assert fake.seen == []
    run(fake, request, make_route({"mask_as_reference": True}))
    assert len(fake.seen[0].json["input"]["image_input"]) == 2


@pytest.mark.parametrize(("reply", "kind", "words"), [
    (fake_module.UNAUTHENTICATED, Kind.AUTH, "refused the API token (HTTP 401)"),
    (fake_module.NO_CREDIT, Kind.AUTH, "insufficient credit"),
    (fake_module.INVALID_INPUT, Kind.BAD_REQUEST, "aspect_ratio must be one of"),
    (fake_module.NOT_FOUND, Kind.UPSTREAM_BROKEN, "no such model"),
    ((500, {"detail": "Internal server error"}, {}), Kind.UPSTREAM_BROKEN, "HTTP 500"),
    ((503, {"detail": "Service unavailable"}, {"retry-after": "4"}), Kind.OVERLOADED, "HTTP 503"),
])
def test_create_errors_map_to_their_class(reply: fake_module.Reply, kind: Kind,
                                          words: str) -> None:
    failure = failure_of(FakeReplicate(submit_reply=reply), make_request(), make_route())
    assert failure.kind is kind
    assert words in failure.message
    assert failure.status == reply[0]
    assert "http" not in failure.message  # the billing URL in the 402 detail is not passed on


def test_rate_limit_takes_retry_after_from_the_header() -> None:
    throttled = (429, fake_module.THROTTLED[1], {"retry-after": "7"})
    failure = failure_of(FakeReplicate(submit_reply=throttled), make_request(), make_route())
    assert (failure.kind, failure.retry_after_s) == (Kind.RATE_LIMITED, 7.0)


def test_rate_limit_without_header_reads_the_reset_from_the_detail() -> None:
    fake = FakeReplicate(submit_reply=fake_module.THROTTLED)
    failure = failure_of(fake, make_request(), make_route())
    assert (failure.kind, failure.retry_after_s) == (Kind.RATE_LIMITED, 30.0)


def test_a_wrong_token_is_auth_and_never_echoed() -> None:
    route = make_route(key="r8_wrong-secret-token")
    failure = failure_of(FakeReplicate(), make_request(), route)
    assert failure.kind is Kind.AUTH and "r8_wrong" not in failure.message


def test_no_key_configured_is_auth_without_a_call() -> None:
    fake = FakeReplicate()
    assert failure_of(fake, make_request(), make_route(key=None)).kind is Kind.AUTH
    assert fake.seen == []


@pytest.mark.parametrize(("error", "options", "kind"), [
    ("The input or output was flagged as sensitive. Please try again with different inputs. "
     "(E005)", {}, Kind.CONTENT_BLOCKED),
    ("NSFW content detected", {}, Kind.CONTENT_BLOCKED),
    ("Prediction failed: the model crashed", {}, Kind.UPSTREAM_BROKEN),
    ("Refused by house rules", {"content_block_markers": ["house rules"]},
     Kind.CONTENT_BLOCKED),
])
def test_failed_prediction_is_classified_by_its_error_text(error: str, options: dict[str, Any],
                                                           kind: Kind) -> None:
    fake = FakeReplicate(states=("starting", "failed"), error=error)
    failure = failure_of(fake, make_request(), make_route(options))
    assert failure.kind is kind
    assert error.split()[0] in failure.message


def test_failed_inside_a_successful_http_reply_is_a_failure() -> None:
    fake = FakeReplicate(states=("failed",), error="flagged as sensitive (E005)")
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.CONTENT_BLOCKED
    assert fake.seen[0].method == "POST" and len(fake.seen) == 1


@pytest.mark.parametrize(("last", "kind"), [("canceled", Kind.UPSTREAM_BROKEN),
                                            ("aborted", Kind.TIMEOUT)])
def test_other_end_states(last: str, kind: Kind) -> None:
    fake = FakeReplicate(states=("starting", last))
    assert failure_of(fake, make_request(), make_route()).kind is kind


def test_succeeded_without_output_is_broken() -> None:
    fake = FakeReplicate(wait_finishes=True, output="none")
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "without output" in failure.message


def test_transient_poll_errors_are_retried() -> None:
    fake = FakeReplicate(states=("starting", "succeeded"),
                         poll_replies=[(503, {"detail": "Service unavailable"}, {})])
    result = run(fake, make_request(), make_route())
    assert len(result.images) == 1
    assert [s.method for s in fake.seen] == ["POST", "GET", "GET", "GET"]


def test_an_expired_output_file_is_broken() -> None:
    fake = FakeReplicate(wait_finishes=True, fetch_status=404)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "HTTP 404" in failure.message


def test_output_on_a_host_not_allowed_is_refused_before_any_request_goes_there() -> None:
    fake = FakeReplicate(wait_finishes=True, output_host="evil.example.com")
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert all(s.url.host != "evil.example.com" for s in fake.seen)


def test_max_wait_cancels_the_prediction_and_times_out() -> None:
    fake = FakeReplicate(states=("starting", "processing"))
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 0.1}))
    assert failure.kind is Kind.TIMEOUT
    cancel = fake.seen[-1]
    prediction = next(iter(fake.predictions.values()))
    assert (cancel.method, str(cancel.url)) == (
        "POST", f"{BASE_URL}/predictions/{prediction.id}/cancel")
    assert cancel.headers["authorization"] == "Bearer test-key"
    assert prediction.canceled


def test_request_deadline_ends_the_attempt_as_timeout() -> None:
    fake = FakeReplicate(states=("starting", "processing"))
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 600}), within_s=0.2)
    assert failure.kind is Kind.TIMEOUT


def test_a_timeout_thrown_in_by_the_driver_yields_the_cancel_call() -> None:
    """Ready for a driver that lets a timed-out flow cancel its job: throw() gets the cancel."""
    steps = flow(make_request(), make_route())
    submit = next(steps)
    assert isinstance(submit, UpstreamCall) and submit.kind == "submit"
    prediction = {"id": "p1", "status": "processing",
                  "urls": {"get": f"{BASE_URL}/predictions/p1",
                           "cancel": f"{BASE_URL}/predictions/p1/cancel"}}
    reply = UpstreamReply(201, httpx.Headers(), httpx.Response(201, json=prediction).content)
    assert isinstance(steps.send(reply), Sleep)
    timeout = UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached"))
    cancel = steps.throw(timeout)
    assert isinstance(cancel, UpstreamCall)
    assert (cancel.kind, cancel.method, cancel.url) == ("cancel", "POST",
                                                        f"{BASE_URL}/predictions/p1/cancel")
    with pytest.raises(UpstreamError) as caught:
        steps.send(UpstreamReply(200, httpx.Headers(), b"{}"))
    assert caught.value is timeout


def test_credentials_go_only_to_the_providers_own_host() -> None:
    route = make_route()
    assert own_host(f"{BASE_URL}/predictions/x", route)
    assert not own_host("https://replicate.delivery/x/out.png", route)
    assert not own_host("https://api.replicate.com.evil.example/v1/predictions/x", route)


# --- End to end: openai SDK -> Switchyard -> fake Replicate ---------------------------------

PROVIDERS_TOML = """
[replicate]
protocol = "replicate"
base_url = "https://api.replicate.com/v1"
key_env = "REPLICATE_API_TOKEN"
timeout_s = 90
max_in_flight = 8
allowed_hosts = ["replicate.delivery", "*.replicate.delivery"]
options = { poll_interval_s = 0.01, poll_interval_max_s = 0.05, max_wait_s = 30 }
"""
MODEL_TOML = kit.nano_banana_2("""
[[routes]]
provider = "replicate"
upstream_model = "google/nano-banana-2"
typical_latency_s = 20
price.per_image = { "1K" = 0.067, "2K" = 0.101, "4K" = 0.151 }
""")


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-2": MODEL_TOML}, {"REPLICATE_API_TOKEN": "test-key"})
    with kit.switchyard(tmp_path, "replicate", catalog) as start:
        yield start


def test_e2e_generate_through_the_sdk(switchyard: Start,
                                      validate: Callable[[str, Any], None]) -> None:
    fake = FakeReplicate()
    sdk = switchyard(fake)
    raw = sdk.images.with_raw_response.generate(model="nano-banana-2", prompt="a red fox",
                                                n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "replicate"
    assert raw.headers["x-switchyard-cost-usd"] == "0.134000"
    result = raw.parse()
    assert len(result.data) == 2 and len(fake.creates()) == 2
    for item in result.data:
        image = decoded(item.b64_json or "")
        assert image.format == "PNG" and image.size == (1248, 832)
    assert fake.seen[0].json["input"]["aspect_ratio"] == "3:2"


def test_e2e_edit_uploads_the_image_as_a_data_uri(
        switchyard: Start) -> None:
    fake = FakeReplicate(wait_finishes=True)
    sdk = switchyard(fake)
    upload = kit.red_png()
    result = sdk.images.edit(model="nano-banana-2", prompt="make it blue",
                             image=("red.png", upload, "image/png"))
    assert result.data and result.data[0].b64_json
    sent = fake.seen[0].json["input"]["image_input"]
    assert sent == [kit.data_uri(upload)]


def test_e2e_blocked_content_is_an_openai_moderation_error(
        switchyard: Start,
        validate: Callable[[str, Any], None]) -> None:
    sdk = switchyard(FakeReplicate(states=("starting", "failed"),
                                   error="The input or output was flagged as sensitive. (E005)"))
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="nano-banana-2", prompt="something unsafe")
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "moderation_blocked"
    assert "flagged as sensitive" in body["error"]["message"]
