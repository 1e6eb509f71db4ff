"""The segmind protocol against a fake Segmind: exact v2 and v1 requests, every queue state and
error shape, and end to end through the official openai SDK."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import geometry, imaging
from proxy.domain import Geometry, ImageRequest, InputImage
from proxy.failures import Kind
from proxy.providers import flows
from proxy.providers.base import Sleep, UpstreamCall
from proxy.providers.segmind import ADAPTER, flow, reset_after
from tests import protocol_kit as kit
from tests.fakes import segmind as fake_module
from tests.fakes.segmind import API_HOST, BASE_URL, FILES_HOST, FakeSegmind, Job
from tests.protocol_kit import Start, decoded, edit_request, make_request, reply

MODEL = "nano-banana-2"
KEY = {"x-api-key": "test-key"}
SEGMIND = kit.Upstream("segmind", BASE_URL, "SEGMIND_API_KEY", (FILES_HOST,), MODEL, "0.084")
V1 = {"api": "v1"}

make_route = SEGMIND.route
run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def only_job(fake: FakeSegmind) -> Job:
    (job,) = fake.jobs.values()
    return job


QUEUE = f"{BASE_URL}/v2/requests/r1"
SUBMITTED = {"request_id": "r1", "status": "QUEUED", "status_url": f"{QUEUE}/status",
             "response_url": QUEUE}


# --- v2: submit, poll, fetch --------------------------------------------------------------


def test_v2_walks_every_state_with_the_exact_requests_and_downloads_the_image() -> None:
    fake = FakeSegmind(states=("QUEUED", "QUEUED", "PROCESSING", "PROCESSING", "COMPLETED"))
    result = run(fake, make_request(seed=5), make_route())
    job = only_job(fake)
    assert job.answered == ["QUEUED", "PROCESSING", "PROCESSING", "COMPLETED"]
    submit, *polls, fetch, download = fake.seen
    assert (submit.method, str(submit.url)) == ("POST", f"{BASE_URL}/v2/{MODEL}")
    assert submit.headers["x-api-key"] == "test-key" and "authorization" not in submit.headers
    assert submit.headers["content-type"] == "application/json"
    assert submit.json == {"prompt": "a banana astronaut", "seed": 5, "aspect_ratio": "16:9",
                           "output_resolution": "2K", "output_format": "png"}
    queue = f"{BASE_URL}/v2/requests/{job.id}"
    assert [(p.method, str(p.url)) for p in polls] == [("GET", f"{queue}/status")] * 4
    assert (fetch.method, str(fetch.url)) == ("GET", queue)  # once, after COMPLETED
    assert all(c.headers["x-api-key"] == "test-key" for c in (*polls, fetch))
    # Result files are public: the key never goes to the file host.
    assert download.url.host == FILES_HOST and "x-api-key" not in download.headers
    (image,) = result.images
    assert base64.b64decode(image.b64) == fake.files[download.url.path]
    assert (result.upstream_id, image.mime) == (job.id, "image/png")
    assert decoded(image.b64).size == geometry.pixels("16:9", "2K")


def test_each_state_gets_its_next_step_and_polls_back_off() -> None:
    steps = flow(make_request(), make_route({"poll_backoff": 2, "poll_interval_max_s": 0.03}))
    assert isinstance(next(steps), UpstreamCall)
    step = steps.send(reply(SUBMITTED))
    sleeps = []
    for state in ("QUEUED", "PROCESSING", "COMPLETED"):
        assert isinstance(step, Sleep)
        sleeps.append(step.seconds)
        poll = steps.send(None)
        assert isinstance(poll, UpstreamCall)
        assert (poll.kind, poll.method, poll.url, poll.headers) == (
            "poll", "GET", f"{QUEUE}/status", KEY)
        step = steps.send(reply({"status": state, "request_id": "r1"}))
    assert sleeps == pytest.approx([0.01, 0.02, 0.03])
    assert isinstance(step, UpstreamCall)
    assert (step.kind, step.method, step.url, step.headers) == ("fetch", "GET", QUEUE, KEY)


def test_state_names_are_route_data_and_an_unknown_state_is_waited_on() -> None:
    steps = flow(make_request(), make_route({"states": {"RUNNING": "pending",
                                                        "DONE": "completed"}}))
    next(steps)
    assert isinstance(steps.send(reply(SUBMITTED)), Sleep)
    for state in ("RUNNING", "WARMING_UP", "COMPLETED"):  # COMPLETED is still known
        assert isinstance(steps.send(None), UpstreamCall)
        step = steps.send(reply({"status": state}))
        if state != "COMPLETED":
            assert isinstance(step, Sleep)
    assert isinstance(step, UpstreamCall) and step.kind == "fetch"
    steps = flow(make_request(), make_route({"states": {"DONE": "completed"}}))
    next(steps)
    steps.send(reply(SUBMITTED))
    steps.send(None)
    fetch = steps.send(reply({"status": "DONE"}))
    assert isinstance(fetch, UpstreamCall) and fetch.url == QUEUE


@pytest.mark.parametrize(("form", "downloads"), [("output", 1), ("data", 0), ("base64", 0)])
def test_every_result_shape_gives_the_image(form: str, downloads: int) -> None:
    fake = FakeSegmind(result_form=form)
    result = run(fake, make_request(output_format="jpeg"), make_route())
    assert sum(s.url.host == FILES_HOST for s in fake.seen) == downloads
    data, fmt = FakeSegmind.image_for(only_job(fake).input)
    assert (only_job(fake).input["output_format"], fmt) == ("jpg", "jpeg")
    assert result.images[0].mime == "image/jpeg"
    assert base64.b64decode(result.images[0].b64) == data


def test_field_names_constants_and_resolutions_are_route_data() -> None:
    fake = FakeSegmind()
    options = {"fields": {"seed": "", "images": "reference_images"},
               "resolutions": {"2K": "2K"}, "output_formats": {"png": "png"},
               "extra_input": {"response_modalities": "IMAGE", "safety_tolerance": 4}}
    run(fake, make_request(seed=42, output_format="webp"), make_route(options))
    assert fake.seen[0].json == {
        "response_modalities": "IMAGE", "safety_tolerance": 4, "prompt": "a banana astronaut",
        "aspect_ratio": "16:9", "output_resolution": "2K", "output_format": "png"}


def test_submit_and_v1_paths_are_route_data() -> None:
    route = make_route({"v2_path": "/v2/google/{model}", "v1_path": "/v1/x/{model}"})
    submit = next(flow(make_request(), route))
    assert isinstance(submit, UpstreamCall) and submit.url == f"{BASE_URL}/v2/google/{MODEL}"
    route = replace(route, options={**route.options, **V1})
    submit = next(flow(make_request(), route))
    assert isinstance(submit, UpstreamCall) and submit.url == f"{BASE_URL}/v1/x/{MODEL}"


def test_n_runs_one_job_per_image() -> None:
    fake = FakeSegmind()
    result = run(fake, make_request(n=3), make_route())
    assert len(fake.submits()) == 3 and len(fake.jobs) == 3
    assert len(result.images) == 3


@pytest.mark.parametrize(("shape", "sent"), [
    (Geometry("1:1", "1K", None, "default"), None),  # no size asked: the model's default
    (Geometry("16:9", "1K", "1344x768", "size"), "16:9"),
])
def test_an_edit_sends_uploaded_bytes_as_data_uris_and_urls_as_given(shape: Geometry,
                                                                      sent: str | None) -> None:
    fake = FakeSegmind()
    result = run(fake, edit_request(geometry=shape), make_route())
    body = fake.seen[0].json
    assert body["image_urls"] == [
        "data:image/png;base64," + base64.b64encode(b"\x89PNG-bytes").decode(),
        "https://example.com/a.jpg"]
    assert body.get("aspect_ratio") == sent and body["output_resolution"] == "1K"
    assert decoded(result.images[0].b64).size == geometry.pixels(sent or "1:1", "1K")


def test_an_edit_with_no_size_takes_the_routes_edit_aspect_ratio() -> None:
    submit = next(flow(edit_request(), make_route({"edit_aspect_ratio": "match_input_image"})))
    assert isinstance(submit, UpstreamCall)
    assert submit.json["aspect_ratio"] == "match_input_image"


@pytest.mark.parametrize(("request_", "options", "words"), [
    (edit_request(mask=InputImage("image/png", data=b"mask")), {}, "mask"),
    (edit_request(), {"inline_images": False}, "image_urls"),
])
def test_unsendable_input_is_refused_before_any_call(request_: ImageRequest,
                                                    options: dict[str, Any], words: str) -> None:
    fake = FakeSegmind()
    failure = failure_of(fake, request_, make_route(options))
    assert failure.kind is Kind.BAD_REQUEST and words in failure.message
    assert fake.seen == []


def test_reference_urls_pass_without_inline_images() -> None:
    fake = FakeSegmind()
    image = InputImage("image/jpeg", url="https://example.com/a.jpg")
    run(fake, edit_request(images=(image,)), make_route({"inline_images": False}))
    assert fake.seen[0].json["image_urls"] == ["https://example.com/a.jpg"]


# --- v1: one blocking call ----------------------------------------------------------------


def test_v1_sends_the_exact_request_and_takes_the_image_bytes() -> None:
    fake = FakeSegmind()
    result = run(fake, make_request(seed=5), make_route(V1))
    (call,) = fake.seen
    assert (call.method, str(call.url)) == ("POST", f"{BASE_URL}/v1/{MODEL}")
    assert call.headers["x-api-key"] == "test-key"
    assert call.json == {"prompt": "a banana astronaut", "seed": 5, "aspect_ratio": "16:9",
                         "output_resolution": "2K", "output_format": "png"}
    data, _ = FakeSegmind.image_for(call.json)
    (image,) = result.images
    assert base64.b64decode(image.b64) == data and image.mime == "image/png"
    assert result.upstream_id and fake.jobs == {}  # the id is v1's x-request-id header


def test_v1_image_bytes_are_known_by_their_magic_whatever_the_content_type() -> None:
    png = imaging.encode(16, 16, "png", "x")
    fake = FakeSegmind(v1_reply=(200, png, {"content-type": "application/octet-stream"}))
    result = run(fake, make_request(), make_route(V1))
    assert result.images[0].mime == "image/png"
    assert base64.b64decode(result.images[0].b64) == png


@pytest.mark.parametrize(("form", "calls"), [("images", 2), ("base64", 1), ("data", 1)])
@pytest.mark.parametrize("reading", ["auto", "json"])
def test_v1_json_answers_name_or_carry_the_image(form: str, calls: int, reading: str) -> None:
    fake = FakeSegmind(v1_form="json", result_form=form)
    result = run(fake, make_request(), make_route({**V1, "v1_response": reading}))
    assert len(fake.seen) == calls
    data, _ = FakeSegmind.image_for(fake.seen[0].json)
    assert base64.b64decode(result.images[0].b64) == data


@pytest.mark.parametrize(("fake", "reading", "words"), [
    (FakeSegmind(v1_form="json"), "image", "not an image"),
    (FakeSegmind(), "json", "malformed result"),
])
def test_v1_response_option_forces_how_the_answer_is_read(fake: FakeSegmind, reading: str,
                                                          words: str) -> None:
    failure = failure_of(fake, make_request(), make_route({**V1, "v1_response": reading}))
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


@pytest.mark.parametrize(("fake", "kind", "words"), [
    (FakeSegmind(error=fake_module.PROMPT_MANDATORY), Kind.BAD_REQUEST, "Mandatory"),
    (FakeSegmind(error=fake_module.BLOCKED), Kind.CONTENT_BLOCKED, "IMAGE_SAFETY"),
    (FakeSegmind(v1_reply=fake_module.NO_CREDITS), Kind.AUTH, "Insufficient credits"),
    (FakeSegmind(v1_reply=(200, {"status": "FAILED", "error": "worker crashed"}, {})),
     Kind.UPSTREAM_BROKEN, "worker crashed"),
    (FakeSegmind(v1_form="json", result_form="text"), Kind.UPSTREAM_BROKEN, "without an image"),
])
def test_v1_errors_map_to_their_class(fake: FakeSegmind, kind: Kind, words: str) -> None:
    failure = failure_of(fake, make_request(), make_route(V1))
    assert failure.kind is kind and words in failure.message
    assert len(fake.seen) == 1


def test_a_bad_api_option_is_refused_before_any_call() -> None:
    for options in ({"api": "v3"}, {**V1, "v1_response": "xml"}):
        fake = FakeSegmind()
        failure = failure_of(fake, make_request(), make_route(options))
        assert failure.kind is Kind.UPSTREAM_BROKEN and "route options" in failure.message
        assert fake.seen == []


# --- Errors at submit, at poll and at the result fetch ------------------------------------


@pytest.mark.parametrize(("answer", "kind", "words", "after"), [
    (fake_module.INVALID_KEY, Kind.AUTH, "API key is invalid", None),
    (fake_module.INVALID_TOKEN, Kind.AUTH, "Token is invalid", None),
    (fake_module.FORBIDDEN, Kind.AUTH, "not allowed", None),
    (fake_module.NO_CREDITS, Kind.AUTH, "cannot pay", None),
    (fake_module.SPEND_LIMIT, Kind.AUTH, "spend limit", None),
    (fake_module.BAD_CONTENT_TYPE, Kind.BAD_REQUEST, "Invalid content type", None),
    ((400, {"error": "aspect_ratio must be one of 1:1, 16:9"}, {}), Kind.BAD_REQUEST,
     "aspect_ratio", None),
    ((400, {"error": "safety_tolerance must be between 1 and 6"}, {}), Kind.BAD_REQUEST,
     "safety_tolerance", None),
    ((400, {"error": "Prompt rejected as NSFW"}, {}), Kind.CONTENT_BLOCKED, "NSFW", None),
    (fake_module.METHOD_NOT_ALLOWED, Kind.BAD_REQUEST, "405 Method Not Allowed", None),
    (fake_module.NOT_FOUND, Kind.UPSTREAM_BROKEN, "no such model", None),
    (fake_module.GONE, Kind.UPSTREAM_BROKEN, "deprecated", None),
    ((429, {"error": "rate_limit_exceeded"}, {"retry-after": "7"}), Kind.RATE_LIMITED,
     "rate limit", 7.0),
    ((500, {"error": "Internal server error"}, {}), Kind.UPSTREAM_BROKEN, "HTTP 500", None),
    ((502, b"<html>Bad Gateway</html>", {}), Kind.OVERLOADED, "Bad Gateway", None),
    ((503, {"error": "Service unavailable"}, {"retry-after": "4"}), Kind.OVERLOADED,
     "HTTP 503", 4.0),
    ((504, {"error": "Gateway timeout"}, {}), Kind.TIMEOUT, "HTTP 504", None),
])
def test_submit_errors_map_to_their_class(answer: fake_module.Reply, kind: Kind, words: str,
                                          after: float | None) -> None:
    fake = FakeSegmind(submit_reply=answer)
    failure = failure_of(fake, make_request(), make_route())
    assert (failure.kind, failure.status, failure.retry_after_s) == (kind, answer[0], after)
    assert words in failure.message and "https://" not in failure.message
    assert len(fake.seen) == 1  # a refused submit is never polled nor re-sent


def test_a_rate_limit_without_retry_after_waits_for_the_reset_header() -> None:
    reset = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    throttled = (429, fake_module.THROTTLED[1],
                 {"x-rate-limit-reset-at-utc": reset.isoformat()})
    failure = failure_of(FakeSegmind(submit_reply=throttled), make_request(), make_route())
    assert failure.kind is Kind.RATE_LIMITED
    assert failure.retry_after_s == pytest.approx(30, abs=2)
    both = (429, throttled[1], {**throttled[2], "retry-after": "3"})  # Retry-After wins
    assert failure_of(FakeSegmind(submit_reply=both), make_request(),
                      make_route()).retry_after_s == 3.0
    elsewhere = (429, throttled[1], {"x-ratelimit-reset": str(time.time() + 20)})
    route = make_route({"reset_header": "x-ratelimit-reset"})
    after = failure_of(FakeSegmind(submit_reply=elsewhere), make_request(), route).retry_after_s
    assert after == pytest.approx(20, abs=2)


NOW = dt.datetime(2026, 11, 20, 10, 0, 0, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("value", "after"), [
    ("2026-11-20T10:00:30Z", 30.0),
    ("2026-11-20T10:00:30", 30.0),  # no zone: UTC, as the header's name says
    ("2026-11-20T11:00:30+01:00", 30.0),
    (str(NOW + 12.5), 12.5),
    ("2026-11-20T09:59:00Z", 0.0),  # already past
    ("2026-11-22T10:00:00Z", 3600.0),  # "not soon" is bounded
    ("soon", None),
    ("", None),
])
def test_reset_after_reads_the_reset_time(value: str, after: float | None) -> None:
    headers = httpx.Headers({"x-rate-limit-reset-at-utc": value} if value else {})
    assert reset_after(headers, "x-rate-limit-reset-at-utc", now=NOW) == after


@pytest.mark.parametrize(("error", "options", "kind"), [
    (fake_module.BLOCKED, {}, Kind.CONTENT_BLOCKED),
    ("Output flagged as sensitive content", {}, Kind.CONTENT_BLOCKED),
    ("Validation error in GeminiProcessor: thinking_level must be one of minimal, high",
     {}, Kind.BAD_REQUEST),
    ("Inference timed out after 600 seconds", {}, Kind.TIMEOUT),
    ("CUDA error: device-side assert triggered", {}, Kind.UPSTREAM_BROKEN),
    ("Invalid response from the image model", {}, Kind.UPSTREAM_BROKEN),  # not the input's
    ("Refused by house rules", {"content_block_markers": ["house rules"]},
     Kind.CONTENT_BLOCKED),
    ("Quota of the upstream exceeded", {"invalid_markers": ["quota"]}, Kind.BAD_REQUEST),
])
def test_a_failed_job_is_classified_by_its_error_text(error: str, options: dict[str, Any],
                                                     kind: Kind) -> None:
    fake = FakeSegmind(states=("QUEUED", "PROCESSING", "FAILED"), error=error)
    failure = failure_of(fake, make_request(), make_route(options))
    assert failure.kind is kind and error.split()[0] in failure.message
    assert only_job(fake).answered == ["PROCESSING", "FAILED"]
    assert fake.seen[-1].url.path.endswith("/status")  # FAILED is final: no result fetch


@pytest.mark.parametrize(("request_", "options", "words"), [
    (make_request(prompt=""), {}, "Prompt is Mandatory"),
    (make_request(), {"resolutions": {"2K": "2k"}}, "output_resolution must be one of"),
    (make_request(), {"fields": {"images": "image_urls"}, "output_formats": {"png": "webp"}},
     "output_format must be one of"),
])
def test_input_the_model_rejects_fails_the_job_as_a_bad_request(
        request_: ImageRequest, options: dict[str, Any], words: str) -> None:
    fake = FakeSegmind()
    failure = failure_of(fake, request_, make_route(options))
    assert failure.kind is Kind.BAD_REQUEST and words in failure.message
    assert only_job(fake).answered[-1] == "FAILED"  # accepted at submit, failed when run


def test_a_submit_answered_failed_is_classified_without_polling() -> None:
    answer: fake_module.Reply = (422, {"status": "FAILED", "error": fake_module.BLOCKED}, {})
    fake = FakeSegmind(submit_reply=answer)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.CONTENT_BLOCKED and len(fake.seen) == 1


@pytest.mark.parametrize(("answers", "kind", "words"), [
    ([fake_module.INVALID_KEY], Kind.AUTH, "API key is invalid"),
    ([(404, {"error": "Request 2c7f59ea not found"}, {})], Kind.UPSTREAM_BROKEN, "not found"),
    ([(200, ["QUEUED"], {})], Kind.UPSTREAM_BROKEN, "malformed status"),
    ([(200, b"not json", {})], Kind.UPSTREAM_BROKEN, "malformed status"),
    ([(422, {"status": "FAILED", "error": fake_module.BLOCKED}, {})], Kind.CONTENT_BLOCKED,
     "IMAGE_SAFETY"),
])
def test_poll_errors_map_to_their_class(answers: list[fake_module.Reply], kind: Kind,
                                        words: str) -> None:
    fake = FakeSegmind(status_replies=answers)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message
    assert [s.method for s in fake.seen] == ["POST", "GET"]


@pytest.mark.parametrize(("fake", "kind", "words"), [
    (FakeSegmind(result_reply=(422, {"status": "FAILED", "error": fake_module.BLOCKED}, {})),
     Kind.CONTENT_BLOCKED, "IMAGE_SAFETY"),
    (FakeSegmind(result_reply=(404, {"error": "Request r1 not found"}, {})),
     Kind.UPSTREAM_BROKEN, "not found"),
    (FakeSegmind(result_reply=(200, [], {})), Kind.UPSTREAM_BROKEN, "malformed result"),
    (FakeSegmind(result_reply=(200, {"status": "COMPLETED", "output": None}, {})),
     Kind.UPSTREAM_BROKEN, "without an image"),
    (FakeSegmind(result_form="text", text="The image was blocked for safety reasons."),
     Kind.CONTENT_BLOCKED, "safety reasons"),
    (FakeSegmind(result_form="text", text="Here is a banana."), Kind.UPSTREAM_BROKEN,
     "without an image"),
    (FakeSegmind(fetch_status=404), Kind.UPSTREAM_BROKEN, "HTTP 404"),
    (FakeSegmind(fetch_status=403), Kind.UPSTREAM_BROKEN, "HTTP 403"),
])
def test_result_fetch_errors_map_to_their_class(fake: FakeSegmind, kind: Kind,
                                                words: str) -> None:
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message
    job = only_job(fake)
    assert job.answered[-1] == "COMPLETED"  # the job finished; its result did not come
    assert any(str(s.url) == f"{BASE_URL}/v2/requests/{job.id}" for s in fake.seen)


def test_result_fields_are_route_data() -> None:
    png = base64.b64encode(imaging.encode(16, 16, "png", "x")).decode()
    body = {"status": "COMPLETED", "artifacts": [{"url": f"data:image/png;base64,{png}"}]}
    fake = FakeSegmind(result_reply=(200, body, {}))
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "without an image" in failure.message
    result = run(fake, make_request(), make_route({"result_fields": ["artifacts"]}))
    assert [i.b64 for i in result.images] == [png]


def test_a_result_with_more_images_than_asked_gives_only_those_asked() -> None:
    pngs = [base64.b64encode(imaging.encode(16, 16, "png", seed)).decode() for seed in "ab"]
    body = {"status": "COMPLETED",
            "images": [{"url": f"data:image/png;base64,{png}"} for png in pngs]}
    result = run(FakeSegmind(result_reply=(200, body, {})), make_request(), make_route())
    assert [i.b64 for i in result.images] == pngs[:1]


def test_transient_status_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "TRANSIENT_RETRY_S", 0.01)
    fake = FakeSegmind(status_replies=[(503, {"error": "Service unavailable"}, {}),
                                       (429, {"error": "rate_limit_exceeded"}, {})])
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert only_job(fake).answered == ["PROCESSING", "COMPLETED"]
    assert sum(s.url.path.endswith("/status") for s in fake.seen) == 4


@pytest.mark.parametrize("body", [
    {"request_id": "r1", "status": "QUEUED"},
    {"status": "QUEUED", "status_url": f"{QUEUE}/status", "response_url": QUEUE},
    {"request_id": "r1", "status": "QUEUED", "status_url": f"{QUEUE}/status"},
])
def test_a_submit_reply_without_its_id_and_urls_is_broken(body: dict[str, Any]) -> None:
    fake = FakeSegmind(submit_reply=(200, body, {}))
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "queue URLs" in failure.message
    assert len(fake.seen) == 1


@pytest.mark.parametrize("at", ["submit", "poll"])
def test_an_upstream_message_quoting_the_key_never_shows_it(at: str) -> None:
    echoed: fake_module.Reply = (401, {"error": "API key SG_0123456789abcdef is invalid"}, {})
    fake = FakeSegmind(token="SG_0123456789abcdef", submit_reply=echoed if at == "submit"
                       else None, status_replies=[echoed] if at == "poll" else [])
    failure = failure_of(fake, make_request(), make_route(key="SG_0123456789abcdef"))
    assert failure.kind is Kind.AUTH and failure.message.startswith("Segmind refused the API")
    assert "SG_0123456789abcdef" not in failure.message and "[key]" in failure.message


@pytest.mark.parametrize(("key", "calls"), [("SG_wrong0secret00", 1), (None, 0)])
def test_a_wrong_or_missing_key_is_auth_and_never_echoed(key: str | None, calls: int) -> None:
    fake = FakeSegmind()
    failure = failure_of(fake, make_request(), make_route(key=key))
    assert failure.kind is Kind.AUTH and "SG_wrong" not in failure.message
    assert len(fake.seen) == calls


# --- Hosts and deadlines --------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example.com", "images.segmind.com.evil.example"])
def test_output_on_a_host_not_allowed_is_refused_before_any_request_goes_there(
        host: str) -> None:
    fake = FakeSegmind(files_host=host)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert all(s.url.host != host for s in fake.seen)


def test_a_status_url_on_another_host_is_refused_and_gets_no_key() -> None:
    elsewhere = "https://api.segmind.com.evil.example/v2/requests/r1"
    submitted = {**SUBMITTED, "status_url": f"{elsewhere}/status", "response_url": elsewhere}
    fake = FakeSegmind(submit_reply=(200, submitted, {}))
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert len(fake.seen) == 1
    steps = flow(make_request(), make_route())
    next(steps)
    steps.send(reply(submitted))
    poll = steps.send(None)
    assert isinstance(poll, UpstreamCall) and poll.headers == {}


def test_max_wait_times_out_without_a_cancel_call() -> None:
    fake = FakeSegmind(states=("QUEUED",))
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 0.1}))
    assert failure.kind is Kind.TIMEOUT and "0.1 s" in failure.message
    _submit, *rest = fake.seen
    # Segmind documents no cancel: after the submit, only status polls went out.
    assert rest and all((s.method, s.url.path.endswith("/status")) == ("GET", True)
                        for s in rest)


@pytest.mark.parametrize(("fake", "options", "words"), [
    (FakeSegmind(delay_s=0.15), {}, "deadline"),  # the submit eats the time; no poll is left
    (FakeSegmind(states=("QUEUED",)), {}, "deadline"),
    (FakeSegmind(delay_s=0.5), {}, "ReadTimeout"),  # the submit itself outlasts the deadline
    (FakeSegmind(delay_s=0.5), V1, "ReadTimeout"),
])
def test_a_slow_answer_or_a_long_queue_ends_at_the_request_deadline(
        fake: FakeSegmind, options: dict[str, Any], words: str) -> None:
    started = time.monotonic()
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 600, **options}),
                         within_s=0.2)
    assert failure.kind is Kind.TIMEOUT and words in failure.message
    assert time.monotonic() - started < 1.0
    assert len(fake.submits()) == 1  # a submit that may have been accepted is not re-sent


# --- End to end: openai SDK -> Switchyard -> fake Segmind ---------------------------------

PROVIDERS_TOML = """
[segmind]
protocol = "segmind"
base_url = "https://api.segmind.com"
key_env = "SEGMIND_API_KEY"
timeout_s = 60
max_in_flight = 8
allowed_hosts = ["images.segmind.com", "*.segmind.com"]
options = { poll_interval_s = 0.01, poll_interval_max_s = 0.05, max_wait_s = 30 }
"""
NANO_BANANA_2_TOML = kit.nano_banana_2("""
[[routes]]
provider = "segmind"
upstream_model = "nano-banana-2"
typical_latency_s = 40
options = { extra_input = { response_modalities = "IMAGE" } }
price.per_image = { "1K" = 0.084, "2K" = 0.126, "4K" = 0.168 }
""", formats='["png", "jpeg"]')
NANO_BANANA_TOML = """
name = "nano-banana"
created = 2026-11-01

[capabilities]
aspect_ratios = ["1:1", "16:9"]
max_n = 4
edits = true
max_reference_images = 3
output_formats = ["png"]

[[routes]]
provider = "segmind"
upstream_model = "nano-banana"
typical_latency_s = 15
options = { api = "v1", fields = { resolution = "", output_format = "", seed = "" } }
price.per_image = { "1K" = 0.04 }
"""



@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    models = {"nano-banana-2": NANO_BANANA_2_TOML, "nano-banana": NANO_BANANA_TOML}
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML, models,
                                {"SEGMIND_API_KEY": "test-key"})
    with kit.switchyard(tmp_path, "segmind", catalog) as start:
        yield start


def test_e2e_generate_through_the_sdk(switchyard: Start,
                                      validate: Callable[[str, Any], None]) -> None:
    fake = FakeSegmind()
    raw = switchyard(fake).images.with_raw_response.generate(
        model="nano-banana-2", prompt="a red fox", n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "segmind"
    assert raw.headers["x-switchyard-cost-usd"] == "0.168000"
    first, second = fake.submits()
    assert first.json == second.json == {
        "response_modalities": "IMAGE", "prompt": "a red fox", "aspect_ratio": "3:2",
        "output_resolution": "1K", "output_format": "png"}
    assert str(first.url) == f"{BASE_URL}/v2/nano-banana-2"
    assert {s.url.host for s in fake.seen} == {API_HOST, FILES_HOST}
    kit.assert_two_pngs(raw, geometry.pixels("3:2", "1K"))


def test_e2e_edit_uploads_the_image_as_a_data_uri(switchyard: Start) -> None:
    fake = FakeSegmind()
    upload = kit.red_png()
    result = switchyard(fake).images.edit(model="nano-banana-2", prompt="make it blue",
                                          image=("red.png", upload, "image/png"))
    assert result.data and result.data[0].b64_json
    (submit,) = fake.submits()
    assert submit.json["image_urls"] == [kit.data_uri(upload)]
    assert "aspect_ratio" not in submit.json


def test_e2e_a_v1_route_answers_in_one_call_and_is_converted(switchyard: Start) -> None:
    fake = FakeSegmind()
    raw = switchyard(fake).images.with_raw_response.generate(model="nano-banana",
                                                             prompt="a red fox")
    assert raw.headers["x-switchyard-cost-usd"] == "0.040000"
    (call,) = fake.seen
    assert str(call.url) == f"{BASE_URL}/v1/nano-banana"
    assert call.json == {"prompt": "a red fox", "aspect_ratio": "1:1"}
    data = raw.parse().data or []
    # Segmind answered a JPEG (its default); the client asked for PNG and gets one.
    assert decoded(data[0].b64_json or "").format == "PNG"


@pytest.mark.parametrize(("fake", "config", "status", "code", "after"), [
    (FakeSegmind(error=fake_module.BLOCKED), {}, 400, "moderation_blocked", None),
    (FakeSegmind(error="Validation error: thinking_level must be one of minimal, high"), {},
     400, "upstream_rejected_request", None),
    (FakeSegmind(submit_reply=fake_module.NO_CREDITS), {}, 502, "upstream_auth_failed", None),
    (FakeSegmind(submit_reply=(429, {"error": "rate_limit_exceeded"}, {"retry-after": "7"})),
     {}, 429, "upstream_rate_limited", "7"),
    (FakeSegmind(states=("QUEUED",)), {"request_timeout_s": 0.3}, 504, "upstream_timeout",
     None),
])
def test_e2e_failures_are_openai_errors(switchyard: Start, validate: Callable[[str, Any], None],
                                        fake: FakeSegmind, config: dict[str, Any], status: int,
                                        code: str, after: str | None) -> None:
    answered, body, retry_after = kit.error_of(switchyard(fake, **config), validate)
    assert (answered, body["error"]["code"]) == (status, code)
    assert retry_after == after
    assert "test-key" not in body["error"]["message"]
