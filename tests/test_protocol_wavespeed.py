"""The wavespeed protocol against a fake WaveSpeed: exact requests, every prediction state,
failures inside HTTP 200, every error shape, webhook signatures, and end to end through the
official openai SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import geometry
from proxy.domain import Geometry, ImageRequest, InputImage
from proxy.failures import Kind
from proxy.providers import flows
from proxy.providers.base import Sleep, UpstreamCall
from proxy.providers.wavespeed import ADAPTER, flow, verify_webhook
from proxy.providers.wavespeed import validate as validate_options
from tests import protocol_kit as kit
from tests.fakes import wavespeed as fake_module
from tests.fakes.wavespeed import API_HOST, BASE_URL, CDN_HOST, FakeWaveSpeed, Prediction
from tests.protocol_kit import FAST, Start, decoded, make_request, reply

MODEL = "google/nano-banana-2"
SUBMIT_URL = f"{BASE_URL}/{MODEL}/text-to-image"
EDIT_URL = f"{BASE_URL}/{MODEL}/edit"
UPLOAD_URL = f"{BASE_URL}/media/upload/binary"
KEY = {"Authorization": "Bearer test-key"}
PNG_BYTES = b"\x89PNG\r\n\x1a\n-reference-bytes"
WAVESPEED = kit.Upstream("wavespeed", BASE_URL, "WAVESPEED_API_KEY",
                         (CDN_HOST, "*.wavespeed.ai"), MODEL, "0.07",
                         tiers=("0.5K", "1K", "2K", "4K"))

make_route = WAVESPEED.route
run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def edit_request(**changes: Any) -> ImageRequest:
    """Uploaded PNG bytes, and a URL whose type the client did not say."""
    return kit.edit_request(InputImage("image/png", data=PNG_BYTES),
                            InputImage("application/octet-stream", url=kit.REFERENCE_URL),
                            **changes)


def only_prediction(fake: FakeWaveSpeed) -> Prediction:
    (prediction,) = fake.predictions.values()
    return prediction


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


# --- Requests and states -------------------------------------------------------------------


def test_submit_poll_download_with_the_exact_requests() -> None:
    fake = FakeWaveSpeed(states=("created", "created", "processing", "completed"))
    result = run(fake, make_request(seed=5), make_route())
    prediction = only_prediction(fake)
    assert prediction.answered == ["created", "processing", "completed"]
    submit, *polls, download = fake.seen
    assert (submit.method, str(submit.url)) == ("POST", SUBMIT_URL)
    assert submit.headers["authorization"] == "Bearer test-key"
    assert submit.headers["content-type"] == "application/json"
    # seed is not in WaveSpeed's documented schema: left out unless a route maps it.
    assert submit.json == {"prompt": "a banana astronaut", "aspect_ratio": "16:9",
                           "resolution": "2k", "output_format": "png"}
    result_url = f"{BASE_URL}/predictions/{prediction.id}/result"
    assert [(p.method, str(p.url)) for p in polls] == [("GET", result_url)] * 3
    assert all(p.headers["authorization"] == "Bearer test-key" for p in polls)
    # Output files are public on the CDN: the key never goes there.
    assert download.url.host == CDN_HOST and "authorization" not in download.headers
    (image,) = result.images
    assert result.upstream_id == prediction.id
    assert image.mime == "image/png"
    assert base64.b64decode(image.b64) == fake.files[download.url.path]
    assert decoded(image.b64).size == geometry.pixels("16:9", "2K")


def test_each_state_gets_its_next_step_and_polls_back_off() -> None:
    steps = flow(make_request(), make_route({"poll_backoff": 2, "poll_interval_max_s": 0.03}))
    submit = next(steps)
    assert isinstance(submit, UpstreamCall) and submit.kind == "submit"
    step = steps.send(reply(envelope({"id": "p1", "status": "created"})))
    sleeps = []
    outputs = [f"https://{CDN_HOST}/predictions/p1/1.png"]
    for state in ("created", "processing", "completed"):
        assert isinstance(step, Sleep)
        sleeps.append(step.seconds)
        poll = steps.send(None)
        assert isinstance(poll, UpstreamCall)
        assert (poll.kind, poll.method, poll.url, poll.headers) == (
            "poll", "GET", f"{BASE_URL}/predictions/p1/result", KEY)
        step = steps.send(reply(envelope({"id": "p1", "status": state, "outputs": outputs})))
    assert sleeps == pytest.approx([0.01, 0.02, 0.03])
    assert isinstance(step, UpstreamCall)
    assert (step.kind, step.method, step.url, step.headers) == ("fetch", "GET", outputs[0], {})


def test_a_prediction_completed_at_submit_is_not_polled() -> None:
    """Sync mode (`enable_sync_mode`, sent through extra_input) answers the finished state."""
    fake = FakeWaveSpeed(states=("completed",))
    options = {"extra_input": {"enable_sync_mode": True}}
    assert len(run(fake, make_request(), make_route(options)).images) == 1
    assert fake.seen[0].json["enable_sync_mode"] is True
    assert [s.url.host for s in fake.seen] == [API_HOST, CDN_HOST]


@pytest.mark.parametrize(("options", "urls_get", "polled"), [
    ({"result_path": "/predictions/{id}"}, None, f"{BASE_URL}/predictions/{{id}}"),
    # The submit doc's urls.get has no /result; followed only when the route says so.
    ({"follow_urls_get": True}, f"{BASE_URL}/predictions/{{id}}", f"{BASE_URL}/predictions/{{id}}"),
    ({}, f"{BASE_URL}/predictions/{{id}}", f"{BASE_URL}/predictions/{{id}}/result"),
])
def test_the_poll_url_is_route_data(options: dict[str, Any], urls_get: str | None,
                                    polled: str) -> None:
    fake = FakeWaveSpeed(states=("created", "processing", "completed"), urls_get=urls_get)
    assert len(run(fake, make_request(), make_route(options)).images) == 1
    prediction = only_prediction(fake)
    polls = [s for s in fake.seen if s.method == "GET" and s.url.host == API_HOST]
    assert [str(p.url) for p in polls] == [polled.replace("{id}", prediction.id)] * 2
    assert all(p.headers["authorization"] == "Bearer test-key" for p in polls)


def test_state_names_are_route_data() -> None:
    fake = FakeWaveSpeed(states=("queued", "running", "succeeded"), completed="succeeded")
    route = make_route({"completed_states": ["succeeded"], "failed_states": ["error"]})
    assert len(run(fake, make_request(), route).images) == 1
    assert only_prediction(fake).answered == ["running", "succeeded"]


def test_an_unknown_state_is_polled_until_a_configured_one() -> None:
    fake = FakeWaveSpeed(states=("created", "queued", "completed"))
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert only_prediction(fake).answered == ["queued", "completed"]


@pytest.mark.parametrize(("tier", "token"), [("0.5K", "0.5k"), ("1K", "1k"), ("4K", "4k")])
def test_resolution_tokens_are_lowercase(tier: str, token: str) -> None:
    fake = FakeWaveSpeed(states=("completed",))
    run(fake, make_request(geometry=Geometry("1:1", tier, None, "size")), make_route())
    assert fake.seen[0].json["resolution"] == token


def test_field_names_tokens_and_constants_are_route_data() -> None:
    fake = FakeWaveSpeed(states=("completed",))
    options = {"fields": {"resolution": "", "seed": "seed"},
               "resolutions": {"2K": "2k-hd"}, "output_formats": {"jpeg": "png"},
               "extra_input": {"enable_base64_output": False, "enable_web_search": True}}
    run(fake, make_request(seed=42, output_format="jpeg"), make_route(options))
    assert fake.seen[0].json == {
        "enable_base64_output": False, "enable_web_search": True,
        "prompt": "a banana astronaut", "seed": 42, "aspect_ratio": "16:9",
        "output_format": "png"}
    fake = FakeWaveSpeed(states=("completed",))
    failure = failure_of(fake, make_request(), make_route({"resolutions": {"2K": "2k-hd"}}))
    assert failure.kind is Kind.BAD_REQUEST and "resolution must be one of" in failure.message


def test_a_model_whose_id_names_its_endpoint_uses_the_submit_path_as_given() -> None:
    fake = FakeWaveSpeed(states=("completed",))
    route = make_route({"submit_path": "/{model}"}, model="google/nano-banana-2/text-to-image")
    run(fake, make_request(), route)
    assert str(fake.seen[0].url) == SUBMIT_URL


def test_webp_is_asked_as_png_for_switchyard_to_convert() -> None:
    fake = FakeWaveSpeed(states=("completed",))
    result = run(fake, make_request(output_format="webp"), make_route())
    assert fake.seen[0].json["output_format"] == "png"
    assert result.images[0].mime == "image/png"


def test_well_formed_route_options_pass_the_catalog_check() -> None:
    options = {**FAST, "max_wait_s": 30, "submit_path": "/{model}", "inline_images": True,
               "resolutions": {"0.5K": "512"}, "error_kinds": {"1403": "overloaded"},
               "completed_states": ["completed"], "fields": {"resolution": ""}}
    assert validate_options(options) == []


@pytest.mark.parametrize(("options", "words"), [
    ({"poll_intervall_s": 1}, "options.poll_intervall_s: unknown option"),
    ({"block_markers": ["x"]}, "options.block_markers: unknown option"),
    ({"error_kinds": {"1403": "overload"}}, "options.error_kinds.1403: 'overload' is not"),
    ({"result_path": "/predictions/result"}, "options.result_path: must contain {id}"),
    ({"completed_states": "completed"}, "options.completed_states: must be a non-empty list"),
    ({"failed_states": []}, "options.failed_states: must be a non-empty list"),
])
def test_unusable_route_options_are_named_at_catalog_load(options: dict[str, Any],
                                                          words: str) -> None:
    (problem,) = validate_options(options)
    assert problem.startswith(words)


# --- Edits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "ratio"), [
    (Geometry("1:1", "1K", None, "default"), None),  # no size asked: keep the input's shape
    (Geometry("16:9", "1K", "1344x768", "size"), "16:9"),
])
def test_an_edit_uploads_bytes_then_submits_to_the_edit_path(shape: Geometry,
                                                            ratio: str | None) -> None:
    fake = FakeWaveSpeed(states=("created", "completed"))
    result = run(fake, edit_request(geometry=shape), make_route())
    upload, submit = fake.seen[:2]
    assert (upload.method, str(upload.url)) == ("POST", UPLOAD_URL)
    assert upload.headers["authorization"] == "Bearer test-key"
    assert upload.files["file"] == ("reference-1.png", "image/png", PNG_BYTES)
    stored = next(p for p in fake.files if p.startswith("/media/images/"))
    assert (submit.method, str(submit.url)) == ("POST", EDIT_URL)
    expected = {"prompt": "a banana astronaut", "resolution": "1k", "output_format": "png",
                "images": [f"https://{CDN_HOST}{stored}", "https://example.com/a.jpg"]}
    if ratio:
        expected["aspect_ratio"] = ratio
    assert submit.json == expected
    assert len(fake.uploads()) == 1  # the https reference goes as given
    assert len(result.images) == 1


def test_inline_images_sends_bytes_as_data_uris_without_uploading() -> None:
    fake = FakeWaveSpeed(states=("completed",))
    run(fake, edit_request(), make_route({"inline_images": True}))
    assert fake.uploads() == []
    assert fake.seen[0].json["images"] == [
        "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode(),
        "https://example.com/a.jpg"]


def test_the_edit_path_and_images_field_are_route_data() -> None:
    fake = FakeWaveSpeed(states=("completed",))
    options = {"edit_path": "/{model}/multi/edit", "fields": {"images": "image_urls"},
               "inline_images": True, "edit_aspect_ratio": "match_input_image"}
    failure = failure_of(fake, edit_request(), make_route(options))
    # The fake holds to the documented schema: a renamed field is refused there.
    assert failure.kind is Kind.BAD_REQUEST and "images is required" in failure.message
    (submit,) = fake.seen
    assert str(submit.url) == f"{BASE_URL}/{MODEL}/multi/edit"
    assert len(submit.json["image_urls"]) == 2 and "images" not in submit.json
    assert submit.json["aspect_ratio"] == "match_input_image"


def test_a_mask_is_refused_before_any_call() -> None:
    fake = FakeWaveSpeed()
    failure = failure_of(fake, edit_request(mask=InputImage("image/png", data=b"mask")),
                         make_route())
    assert failure.kind is Kind.BAD_REQUEST and "mask" in failure.message
    assert fake.seen == []


@pytest.mark.parametrize(("answer", "kind", "words"), [
    (fake_module.TOP_UP, Kind.AUTH, "needs a top-up"),
    ((413, {"code": 413, "message": "file too large", "data": None}, {}), Kind.BAD_REQUEST,
     "file too large"),
    ((200, envelope({"type": "image"}), {}), Kind.UPSTREAM_BROKEN, "no URL"),
    ((200, envelope(None), {}), Kind.UPSTREAM_BROKEN, "malformed upload"),
])
def test_a_failed_upload_ends_the_attempt_before_any_submit(answer: fake_module.Reply,
                                                            kind: Kind, words: str) -> None:
    fake = FakeWaveSpeed(upload_reply=answer)
    failure = failure_of(fake, edit_request(), make_route())
    assert failure.kind is kind and words in failure.message
    assert fake.submits() == [] and len(fake.seen) == 1


# --- n > 1 ---------------------------------------------------------------------------------


def test_n_runs_one_prediction_per_image() -> None:
    fake = FakeWaveSpeed()
    result = run(fake, make_request(n=3), make_route())
    assert len(fake.submits()) == 3 and len(fake.predictions) == 3
    assert all("num_images" not in s.json for s in fake.submits())
    assert len(result.images) == 3
    assert len({image.b64 for image in result.images}) == 1  # same prompt, same fake image


def test_n_with_one_prediction_failing_delivers_the_others() -> None:
    fake = FakeWaveSpeed(states=("created", "completed"),
                         result_replies=[(200, envelope({"id": "x", "status": "failed",
                                                         "error": "boom"}), {})])
    result = run(fake, make_request(n=2), make_route())
    assert len(result.images) == 1 and len(fake.predictions) == 2


# --- Outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["data", "base64"])
def test_inline_outputs_need_no_download(output: str) -> None:
    fake = FakeWaveSpeed(states=("completed",), output=output)
    result = run(fake, make_request(output_format="jpeg"), make_route())
    assert all(s.url.host == API_HOST for s in fake.seen)
    prediction = only_prediction(fake)
    data, _ = FakeWaveSpeed.image_for(prediction.input)
    assert result.images[0].mime == "image/jpeg"
    assert result.images[0].b64 == base64.b64encode(data).decode("ascii")


def test_an_output_that_is_neither_url_nor_image_is_broken() -> None:
    answer = envelope({"id": "x", "status": "completed", "outputs": ["bm90IGFuIGltYWdl"]})
    failure = failure_of(FakeWaveSpeed(submit_reply=(200, answer, {})), make_request(),
                         make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "neither a URL" in failure.message


@pytest.mark.parametrize(("fake", "kind", "words"), [
    (FakeWaveSpeed(nsfw=(True,)), Kind.CONTENT_BLOCKED, "NSFW"),
    (FakeWaveSpeed(output="none"), Kind.UPSTREAM_BROKEN, "without output"),
    (FakeWaveSpeed(fetch_status=404), Kind.UPSTREAM_BROKEN, "HTTP 404"),
])
def test_a_completed_prediction_without_a_usable_image(fake: FakeWaveSpeed, kind: Kind,
                                                       words: str) -> None:
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message
    assert only_prediction(fake).answered[-1] == "completed"


def test_outputs_flagged_nsfw_are_dropped_and_the_rest_kept() -> None:
    urls = [f"https://{CDN_HOST}/predictions/x/{i}.png" for i in (1, 2)]
    answer = envelope({"id": "x", "status": "completed", "outputs": urls,
                       "has_nsfw_contents": [True, False]})
    fake = FakeWaveSpeed(submit_reply=(200, answer, {}))
    fake.files["/predictions/x/2.png"] = FakeWaveSpeed.image_for({"prompt": "p"})[0]
    result = run(fake, make_request(), make_route())
    assert len(result.images) == 1
    assert [s.url.path for s in fake.seen if s.url.host == CDN_HOST] == ["/predictions/x/2.png"]


def test_only_as_many_outputs_as_asked_are_downloaded() -> None:
    urls = [f"https://{CDN_HOST}/predictions/x/{i}.png" for i in (1, 2)]
    answer = envelope({"id": "x", "status": "completed", "outputs": urls})
    fake = FakeWaveSpeed(submit_reply=(200, answer, {}))
    fake.files["/predictions/x/1.png"] = FakeWaveSpeed.image_for({"prompt": "p"})[0]
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert [s.url.path for s in fake.seen if s.url.host == CDN_HOST] == ["/predictions/x/1.png"]


@pytest.mark.parametrize("host", ["evil.example.com", "d1q70pf5vjeyhc.cloudfront.net.evil.io",
                                  "someone-else.cloudfront.net"])
def test_output_on_a_host_not_allowed_is_refused_before_any_request_goes_there(
        host: str) -> None:
    fake = FakeWaveSpeed(cdn_host=host)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert all(s.url.host != host for s in fake.seen)


def test_a_urls_get_on_another_host_is_refused_and_never_gets_the_key() -> None:
    elsewhere = "https://api.wavespeed.ai.evil.example/api/v3/predictions/p1/result"
    fake = FakeWaveSpeed(urls_get=elsewhere)
    failure = failure_of(fake, make_request(), make_route({"follow_urls_get": True}))
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert len(fake.seen) == 1
    steps = flow(make_request(), make_route({"follow_urls_get": True}))
    next(steps)
    steps.send(reply(envelope({"id": "p1", "status": "created", "urls": {"get": elsewhere}})))
    poll = steps.send(None)
    assert isinstance(poll, UpstreamCall) and (poll.url, poll.headers) == (elsewhere, {})


# --- Errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "kind", "words", "after"), [
    (fake_module.UNAUTHORIZED, Kind.AUTH, "refused the API key (HTTP 401)", None),
    (fake_module.TOP_UP, Kind.AUTH, "needs a top-up", None),
    (fake_module.SUSPENDED, Kind.AUTH, "refused the API key (HTTP 403)", None),
    ((400, {"code": 400, "message": "Insufficient balance", "data": None}, {}), Kind.AUTH,
     "needs a top-up", None),
    ((402, {"code": 402, "message": "Payment required", "data": None}, {}), Kind.AUTH,
     "refused the API key (HTTP 402)", None),
    (fake_module.NOT_FOUND, Kind.UPSTREAM_BROKEN, "no such model", None),
    ((400, {"code": 400, "message": "prompt is required", "data": None}, {}),
     Kind.BAD_REQUEST, "prompt is required", None),
    ((400, {"code": 400, "message": "The prompt contains sensitive content", "data": None},
      {}), Kind.CONTENT_BLOCKED, "sensitive content", None),
    (fake_module.TOO_MANY, Kind.RATE_LIMITED, "rate limit", 7.0),
    ((429, {"code": 429, "message": "Too Many Requests"}, {}), Kind.RATE_LIMITED,
     "rate limit", None),
    ((500, {"code": 500, "message": "Internal server error"}, {}), Kind.UPSTREAM_BROKEN,
     "HTTP 500", None),
    ((503, {"code": 503, "message": "Service unavailable"}, {"retry-after": "4"}),
     Kind.OVERLOADED, "HTTP 503", 4.0),
    ((504, b"<html>Gateway Timeout</html>", {}), Kind.TIMEOUT, "Gateway Timeout", None),
])
def test_submit_errors_map_to_their_class(answer: fake_module.Reply, kind: Kind, words: str,
                                          after: float | None) -> None:
    fake = FakeWaveSpeed(submit_reply=answer)
    failure = failure_of(fake, make_request(), make_route())
    assert (failure.kind, failure.status, failure.retry_after_s) == (kind, answer[0], after)
    assert words in failure.message and "https://" not in failure.message
    assert len(fake.seen) == 1  # a refused submit is never polled nor re-sent


@pytest.mark.parametrize(("code", "message", "kind", "status"), [
    (401, "HTTP 401", Kind.AUTH, 401),  # auth refusals are never quoted
    (429, "Too Many Requests", Kind.RATE_LIMITED, 429),
    (400, "aspect_ratio is invalid", Kind.BAD_REQUEST, 400),
    (1400, "A required parameter is missing.", Kind.BAD_REQUEST, 200),
    (7777, "something odd", Kind.UPSTREAM_BROKEN, 200),
])
def test_an_error_code_in_an_http_200_envelope_is_a_failure(code: int, message: str,
                                                            kind: Kind, status: int) -> None:
    fake = FakeWaveSpeed(submit_reply=(200, envelope(None, code, message), {}))
    failure = failure_of(fake, make_request(), make_route())
    assert (failure.kind, failure.status) == (kind, status)
    assert message in failure.message and len(fake.seen) == 1


@pytest.mark.parametrize(("code", "error", "options", "kind"), [
    (1200, "The content contains sensitive information.", {}, Kind.CONTENT_BLOCKED),
    (1400, "A required parameter is missing.", {}, Kind.BAD_REQUEST),
    (1401, "The parameter value is invalid.", {}, Kind.BAD_REQUEST),
    (1402, "Failed to download image from the provided URL.", {}, Kind.BAD_REQUEST),
    (1403, "The task could not be completed.", {}, Kind.UPSTREAM_BROKEN),
    (5000, "An internal error occurred.", {}, Kind.UPSTREAM_BROKEN),
    (5003, "The service is temporarily unavailable.", {}, Kind.OVERLOADED),
    (5004, "The request timed out.", {}, Kind.TIMEOUT),
    (None, "NSFW content detected", {}, Kind.CONTENT_BLOCKED),
    (1405, "Image generation blocked by safety filter", {}, Kind.CONTENT_BLOCKED),
    (None, "model crashed", {}, Kind.UPSTREAM_BROKEN),
    (1403, "quota of the upstream model exhausted", {"error_kinds": {"1403": "overloaded"}},
     Kind.OVERLOADED),
    (None, "Refused by house rules", {"content_block_markers": ["house rules"]},
     Kind.CONTENT_BLOCKED),
])
def test_a_failed_prediction_inside_http_200_is_classified(code: int | None, error: str,
                                                           options: dict[str, Any],
                                                           kind: Kind) -> None:
    fake = FakeWaveSpeed(states=("created", "processing", "failed"), error=error,
                         error_code=code)
    failure = failure_of(fake, make_request(), make_route(options))
    assert failure.kind is kind and error.split()[0] in failure.message
    assert only_prediction(fake).answered == ["processing", "failed"]
    assert all(s.url.host == API_HOST for s in fake.seen)  # nothing to download


def test_a_prediction_in_the_envelope_speaks_for_itself() -> None:
    """An envelope code beside a prediction does not decide: the prediction's state does."""
    failed = {"id": "x", "status": "failed", "code": 1200, "error": "sensitive content"}
    fake = FakeWaveSpeed(states=("created", "completed"), result_replies=[
        (200, envelope(failed, 500, "prediction failed"), {})])
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.CONTENT_BLOCKED and "sensitive content" in failure.message


def test_failed_at_submit_is_not_polled() -> None:
    fake = FakeWaveSpeed(states=("failed",), error="flagged as sensitive", error_code=1200)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.CONTENT_BLOCKED
    assert len(fake.seen) == 1


def test_transient_result_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "TRANSIENT_RETRY_S", 0.01)
    fake = FakeWaveSpeed(states=("created", "completed"), result_replies=[
        (503, {"code": 503, "message": "Service unavailable"}, {}), fake_module.TOO_MANY])
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert only_prediction(fake).answered == ["completed"]
    assert sum(s.url.path.endswith("/result") for s in fake.seen) == 3


@pytest.mark.parametrize(("changes", "words"), [
    ({"submit_reply": (200, envelope({"status": "created"}), {})}, "no prediction id"),
    ({"submit_reply": (200, [], {})}, "not a JSON object"),
    ({"submit_reply": (200, envelope(["created"]), {})}, "malformed submit"),
    ({"result_replies": [(200, envelope("processing"), {})]}, "malformed result"),
    ({"result_replies": [(404, {"code": 404, "message": "prediction not found"}, {})]},
     "no such model or prediction"),
])
def test_malformed_or_missing_answers_are_upstream_broken(changes: dict[str, Any],
                                                          words: str) -> None:
    failure = failure_of(FakeWaveSpeed(**changes), make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


@pytest.mark.parametrize(("key", "calls"), [("ws-wrong-secret-key", 1), (None, 0)])
def test_a_wrong_or_missing_key_is_auth_and_never_echoed(key: str | None, calls: int) -> None:
    fake = FakeWaveSpeed()
    failure = failure_of(fake, make_request(), make_route(key=key))
    assert failure.kind is Kind.AUTH and "ws-wrong" not in failure.message
    assert len(fake.seen) == calls


@pytest.mark.parametrize("status", [401, 403])
def test_an_auth_refusal_quoting_the_key_does_not_pass_it_on(status: int) -> None:
    body = {"code": status, "message": "invalid key ws-wrong-secret-key", "data": None}
    echoed: fake_module.Reply = (status, body, {})
    failure = failure_of(FakeWaveSpeed(submit_reply=echoed), make_request(),
                         make_route(key="ws-wrong-secret-key"))
    assert failure.kind is Kind.AUTH and "ws-wrong" not in failure.message


# --- Time limits ---------------------------------------------------------------------------


def test_max_wait_ends_the_attempt_as_timeout() -> None:
    fake = FakeWaveSpeed(states=("created", "processing"))
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 0.1}))
    assert failure.kind is Kind.TIMEOUT and "0.1 s" in failure.message
    assert only_prediction(fake).answered[-1] == "processing"


@pytest.mark.parametrize("fake", [FakeWaveSpeed(delay_s=0.3),
                                  FakeWaveSpeed(states=("created", "processing"))])
def test_a_slow_answer_or_an_endless_prediction_ends_at_the_deadline(
        fake: FakeWaveSpeed) -> None:
    started = time.monotonic()
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 600}), within_s=0.2)
    assert failure.kind is Kind.TIMEOUT and "deadline" in failure.message
    assert time.monotonic() - started < 1.0


# --- Webhook signatures --------------------------------------------------------------------

SECRET = "whsec_c2VjcmV0LW5vdC1iYXNlNjQ"
BODY = b'{"id":"pred_abc123","status":"completed"}'
STAMP = 1758798328
# HMAC-SHA256 computed outside Python (openssl dgst -hmac 'c2VjcmV0LW5vdC1iYXNlNjQ').
KNOWN = "0d16d318f19e3893391f73f991f28151dcbc3e922b1f88b4dffd991a95b19d75"


def signed(body: bytes = BODY, stamp: int = STAMP, key: bytes = b"c2VjcmV0LW5vdC1iYXNlNjQ",
           webhook_id: str = "45b392b22c3b449fa935bd4dc") -> dict[str, str]:
    digest = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(stamp),
            "webhook-signature": f"v3,{digest.hexdigest()}"}


def test_a_genuine_webhook_verifies() -> None:
    headers = signed()
    assert headers["webhook-signature"] == f"v3,{KNOWN}"
    assert verify_webhook(headers, BODY, SECRET, now=STAMP + 10)
    shouted = {name.title(): value for name, value in headers.items()}
    assert verify_webhook(httpx.Headers(shouted), BODY, SECRET, now=STAMP)
    rotated = {**headers, "webhook-signature": f"v3,{'0' * 64} {headers['webhook-signature']}"}
    assert verify_webhook(rotated, BODY, SECRET, now=STAMP)


@pytest.mark.parametrize(("headers", "body", "secret"), [
    (signed(), BODY.replace(b"completed", b"failed"), SECRET),  # tampered body
    (signed(), BODY + b" ", SECRET),
    ({**signed(), "webhook-id": "another-id"}, BODY, SECRET),
    ({**signed(), "webhook-timestamp": str(STAMP + 1)}, BODY, SECRET),
    (signed(), BODY, "whsec_another-secret"),
    ({**signed(), "webhook-signature": f"v1,{KNOWN}"}, BODY, SECRET),  # not v3
    ({**signed(), "webhook-signature": KNOWN}, BODY, SECRET),
    ({**signed(), "webhook-signature": f"v3,{KNOWN[:-2]}"}, BODY, SECRET),
    # Standard Webhooks would base64-decode the key; WaveSpeed uses the text itself.
    (signed(key=base64.b64decode("c2VjcmV0LW5vdC1iYXNlNjQ=")), BODY, SECRET),
])
def test_a_tampered_or_wrongly_signed_webhook_is_rejected(headers: dict[str, str],
                                                          body: bytes, secret: str) -> None:
    assert not verify_webhook(headers, body, secret, now=STAMP)


@pytest.mark.parametrize(("now", "tolerance", "valid"), [
    (STAMP + 300, 300, True), (STAMP + 301, 300, False), (STAMP - 301, 300, False),
    (STAMP + 3600, 300, False), (STAMP + 3600, 7200, True), (STAMP + 31, 30, False),
])
def test_a_replayed_webhook_outside_the_tolerance_is_rejected(now: float, tolerance: float,
                                                              valid: bool) -> None:
    assert verify_webhook(signed(), BODY, SECRET, now=now, tolerance_s=tolerance) is valid


@pytest.mark.parametrize(("headers", "secret"), [
    ({}, SECRET),
    ({k: v for k, v in signed().items() if k != "webhook-signature"}, SECRET),
    ({k: v for k, v in signed().items() if k != "webhook-id"}, SECRET),
    ({k: v for k, v in signed().items() if k != "webhook-timestamp"}, SECRET),
    ({**signed(), "webhook-signature": ""}, SECRET),
    ({**signed(), "webhook-timestamp": "yesterday"}, SECRET),
    ({**signed(), "webhook-signature": "v3,ünïcode"}, SECRET),
    (signed(key=b""), "whsec_"),  # an empty secret never verifies anything
])
def test_a_webhook_missing_its_signature_parts_is_rejected(headers: dict[str, str],
                                                           secret: str) -> None:
    assert not verify_webhook(headers, BODY, secret, now=STAMP)


# --- End to end: openai SDK -> Switchyard -> fake WaveSpeed --------------------------------

PROVIDERS_TOML = """
[wavespeed]
protocol = "wavespeed"
base_url = "https://api.wavespeed.ai/api/v3"
key_env = "WAVESPEED_API_KEY"
timeout_s = 60
max_in_flight = 8
allowed_hosts = ["d1q70pf5vjeyhc.cloudfront.net", "*.wavespeed.ai"]
options = { poll_interval_s = 0.01, poll_interval_max_s = 0.05, max_wait_s = 30 }
"""
MODEL_TOML = kit.nano_banana_2("""
[[routes]]
provider = "wavespeed"
upstream_model = "google/nano-banana-2"
typical_latency_s = 15
price.per_image = { "0.5K" = 0.045, "1K" = 0.07, "2K" = 0.105, "4K" = 0.14 }
""", formats='["png", "jpeg"]')



@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-2": MODEL_TOML}, {"WAVESPEED_API_KEY": "test-key"})
    with kit.switchyard(tmp_path, "wavespeed", catalog) as start:
        yield start


def test_e2e_generate_through_the_sdk(switchyard: Start,
                                      validate: Callable[[str, Any], None]) -> None:
    fake = FakeWaveSpeed()
    raw = switchyard(fake).images.with_raw_response.generate(
        model="nano-banana-2", prompt="a red fox", n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "wavespeed"
    assert raw.headers["x-switchyard-cost-usd"] == "0.140000"
    submits = fake.submits()
    assert len(submits) == 2 and len(fake.predictions) == 2
    assert all(s.headers["authorization"] == "Bearer test-key" for s in submits)
    assert {str(s.url) for s in submits} == {SUBMIT_URL}
    assert submits[0].json == {"prompt": "a red fox", "aspect_ratio": "3:2",
                               "resolution": "1k", "output_format": "png"}
    kit.assert_two_pngs(raw, geometry.pixels("3:2", "1K"))


def test_e2e_edit_uploads_the_image_and_submits_to_the_edit_path(switchyard: Start) -> None:
    fake = FakeWaveSpeed()
    upload = kit.red_png()
    result = switchyard(fake).images.edit(model="nano-banana-2", prompt="make it blue",
                                          image=("red.png", upload, "image/png"))
    assert result.data and result.data[0].b64_json
    (sent,) = fake.uploads()
    assert sent.files["file"][1:] == ("image/png", upload)
    (submit,) = fake.submits()
    assert str(submit.url) == EDIT_URL
    (reference,) = submit.json["images"]
    assert fake.files[httpx.URL(reference).path] == upload
    assert "aspect_ratio" not in submit.json


@pytest.mark.parametrize(("fake", "config", "status", "code", "after"), [
    (FakeWaveSpeed(states=("created", "failed"), error="The content contains sensitive "
                   "information.", error_code=1200), {}, 400, "moderation_blocked", None),
    (FakeWaveSpeed(submit_reply=(400, {"code": 400, "message": "prompt is too long"}, {})),
     {}, 400, "upstream_rejected_request", None),
    (FakeWaveSpeed(submit_reply=fake_module.TOP_UP), {}, 502, "upstream_auth_failed", None),
    (FakeWaveSpeed(submit_reply=fake_module.TOO_MANY), {}, 429, "upstream_rate_limited", "7"),
    (FakeWaveSpeed(states=("created", "processing")), {"request_timeout_s": 0.3}, 504,
     "upstream_timeout", None),
])
def test_e2e_failures_are_openai_errors(switchyard: Start, validate: Callable[[str, Any], None],
                                        fake: FakeWaveSpeed, config: dict[str, Any],
                                        status: int, code: str, after: str | None) -> None:
    answered, body, retry_after = kit.error_of(switchyard(fake, **config), validate)
    assert (answered, body["error"]["code"]) == (status, code)
    assert retry_after == after
