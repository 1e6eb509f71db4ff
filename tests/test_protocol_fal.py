"""The fal protocol against a fake fal queue: exact requests, every queue state and error shape,
and end to end through the official openai SDK."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import geometry, imaging
from proxy.domain import Geometry, ImageRequest, InputImage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import flows
from proxy.providers.base import Sleep, UpstreamCall
from proxy.providers.fal import ADAPTER, flow
from tests import protocol_kit as kit
from tests.fakes import fal as fake_module
from tests.fakes.fal import BASE_URL, CDN_HOST, QUEUE_HOST, FakeFal, Job
from tests.protocol_kit import Start, decoded, edit_request, make_request, reply

MODEL = "fal-ai/nano-banana-2"
SUBMIT_URL = f"{BASE_URL}/{MODEL}"
KEY = {"Authorization": "Key test-key"}
FAL = kit.Upstream("fal", BASE_URL, "FAL_KEY", ("fal.media", "*.fal.media"), MODEL, "0.08")

make_route = FAL.route
run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def only_job(fake: FakeFal) -> Job:
    (job,) = fake.jobs.values()
    return job


def test_queue_flow_walks_every_state_with_the_exact_requests_and_decodes_the_images() -> None:
    fake = FakeFal(states=("IN_QUEUE", "IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS", "COMPLETED"))
    result = run(fake, make_request(n=2, seed=5), make_route())
    job = only_job(fake)
    assert job.answered == ["IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]
    submit, *polls, fetch, first, second = fake.seen
    assert (submit.method, str(submit.url)) == ("POST", SUBMIT_URL)
    assert submit.headers["authorization"] == "Key test-key"
    assert submit.headers["content-type"] == "application/json"
    assert "x-fal-object-lifecycle-preference" not in submit.headers
    assert submit.json == {"prompt": "a banana astronaut", "num_images": 2, "seed": 5,
                           "aspect_ratio": "16:9", "resolution": "2K", "output_format": "png"}
    queue = f"{BASE_URL}/{MODEL}/requests/{job.id}"
    # The result is fetched once, after COMPLETED (earlier, fal answers 400).
    assert [(p.method, str(p.url)) for p in polls] == [("GET", f"{queue}/status")] * 4
    assert (fetch.method, str(fetch.url)) == ("GET", queue)
    assert all(c.headers["authorization"] == "Key test-key" for c in (*polls, fetch))
    # Result files are public on fal's CDN: the key never goes there.
    assert [d.url.host for d in (first, second)] == [CDN_HOST] * 2
    assert not any("authorization" in d.headers for d in (first, second))
    width, height = geometry.pixels("16:9", "2K")
    assert (result.upstream_id, result.size) == (job.id, f"{width}x{height}")
    for image, download in zip(result.images, (first, second), strict=True):
        assert base64.b64decode(image.b64) == fake.files[download.url.path]
        assert image.mime == "image/png"
        assert (decoded(image.b64).format, decoded(image.b64).size) == ("PNG", (width, height))


def test_each_state_gets_its_next_step_and_polls_back_off() -> None:
    steps = flow(make_request(), make_route({"poll_backoff": 2, "poll_interval_max_s": 0.03}))
    assert isinstance(next(steps), UpstreamCall)
    urls = {"status_url": f"{BASE_URL}/fal-ai/x/requests/r1/status",
            "response_url": f"{BASE_URL}/fal-ai/x/requests/r1"}
    step = steps.send(reply({"request_id": "r1", **urls}))
    sleeps = []
    for state in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
        assert isinstance(step, Sleep)
        sleeps.append(step.seconds)
        poll = steps.send(None)
        assert isinstance(poll, UpstreamCall)
        assert (poll.kind, poll.method, poll.url, poll.headers) == (
            "poll", "GET", urls["status_url"], KEY)
        step = steps.send(reply({"status": state}))
    assert sleeps == pytest.approx([0.01, 0.02, 0.03])
    assert isinstance(step, UpstreamCall)
    assert (step.kind, step.method, step.url, step.headers) == (
        "fetch", "GET", urls["response_url"], KEY)


@pytest.mark.parametrize(("shape", "ratio"), [
    (Geometry("1:1", "1K", None, "default"), "auto"),  # no size asked: keep the input's shape
    (Geometry("16:9", "1K", "1344x768", "size"), "16:9"),
])
def test_an_edit_goes_to_the_edit_endpoint_and_is_polled_by_app_id(shape: Geometry,
                                                                   ratio: str) -> None:
    fake = FakeFal()
    result = run(fake, edit_request(geometry=shape), make_route())
    submit = fake.seen[0]
    assert str(submit.url) == f"{SUBMIT_URL}/edit"
    assert submit.json == {
        "prompt": "a banana astronaut", "num_images": 1, "aspect_ratio": ratio,
        "resolution": "1K", "output_format": "png",
        "image_urls": ["data:image/png;base64," + base64.b64encode(b"\x89PNG-bytes").decode(),
                       "https://example.com/a.jpg"]}
    assert only_job(fake).endpoint == f"{MODEL}/edit"
    later = [s.url.path for s in fake.seen[1:] if s.url.host == QUEUE_HOST]
    assert later and all(p.startswith(f"/{MODEL}/requests/") for p in later)
    shown = "1:1" if ratio == "auto" else ratio
    assert decoded(result.images[0].b64).size == geometry.pixels(shown, "1K")


def test_queue_urls_left_out_of_the_submit_reply_are_rebuilt_from_the_app_id() -> None:
    fake = FakeFal(omit_urls=True)
    assert len(run(fake, make_request(), make_route(model="fal-ai/flux/dev")).images) == 1
    assert str(fake.seen[0].url) == f"{BASE_URL}/fal-ai/flux/dev"
    queue = f"{BASE_URL}/fal-ai/flux/requests/{only_job(fake).id}"  # the app, not the sub-path
    assert [str(s.url) for s in fake.seen[1:4]] == [f"{queue}/status"] * 2 + [queue]


def test_data_uri_results_need_no_download() -> None:
    fake = FakeFal(data_uris=True)
    result = run(fake, make_request(output_format="jpeg"), make_route())
    assert all(s.url.host == QUEUE_HOST for s in fake.seen)
    job = only_job(fake)
    assert job.arguments["output_format"] == "jpeg"
    data, _, _ = FakeFal.image_for(job.arguments)
    assert result.images[0].mime == "image/jpeg"
    assert result.images[0].b64 == base64.b64encode(data).decode("ascii")


def test_field_names_constants_and_result_expiry_are_route_data() -> None:
    fake = FakeFal()
    options = {"fields": {"resolution": "", "seed": ""}, "output_formats": {"webp": "png"},
               "extra_input": {"safety_tolerance": "2", "limit_generations": True},
               "result_expiry_s": 3600}
    run(fake, make_request(seed=42, output_format="webp"), make_route(options))
    assert fake.seen[0].json == {
        "safety_tolerance": "2", "limit_generations": True, "prompt": "a banana astronaut",
        "num_images": 1, "aspect_ratio": "16:9", "output_format": "png"}
    # fal's CDN drops the files after this long; asked once, on the submit.
    headers = [s.headers.get("x-fal-object-lifecycle-preference") for s in fake.seen]
    assert orjson.loads(headers[0] or "") == {"expiration_duration_seconds": 3600}
    assert headers[1:] == [None] * (len(headers) - 1)


def test_n_above_four_runs_one_request_per_four_images() -> None:
    fake = FakeFal()
    result = run(fake, make_request(n=6), make_route())
    assert sorted(s.json["num_images"] for s in fake.submits()) == [2, 4]
    assert len(result.images) == 6


@pytest.mark.parametrize(("request_", "options", "words"), [
    (edit_request(mask=InputImage("image/png", data=b"mask")), {}, "mask"),
    (edit_request(), {"inline_images": False}, "image_urls"),
])
def test_unsendable_input_is_refused_before_any_call(request_: ImageRequest,
                                                    options: dict[str, Any], words: str) -> None:
    fake = FakeFal()
    failure = failure_of(fake, request_, make_route(options))
    assert failure.kind is Kind.BAD_REQUEST and words in failure.message
    assert fake.seen == []


def test_reference_urls_pass_without_inline_images() -> None:
    fake = FakeFal()
    image = InputImage("image/jpeg", url="https://example.com/a.jpg")
    run(fake, edit_request(images=(image,)), make_route({"inline_images": False}))
    assert fake.seen[0].json["image_urls"] == ["https://example.com/a.jpg"]


def data_item(flagged_seed: str) -> dict[str, Any]:
    png = base64.b64encode(imaging.encode(16, 16, "png", flagged_seed)).decode()
    return {"url": f"data:image/png;base64,{png}", "content_type": "image/png"}


def test_images_the_safety_checker_flagged_are_dropped() -> None:
    output = {"images": [data_item("a"), data_item("b")], "has_nsfw_concepts": [True, False]}
    result = run(FakeFal(result_reply=(200, output, {})), make_request(n=2), make_route())
    assert [i.b64 for i in result.images] == [data_item("b")["url"].split(",")[1]]


@pytest.mark.parametrize(("fake", "kind", "words"), [
    (FakeFal(nsfw=True), Kind.CONTENT_BLOCKED, "flagged as unsafe"),
    (FakeFal(result_reply=(200, {"images": [], "description": "Blocked by safety filter"}, {})),
     Kind.CONTENT_BLOCKED, "safety filter"),
    (FakeFal(result_reply=(200, {"images": [], "description": ""}, {})),
     Kind.UPSTREAM_BROKEN, "no image"),
])
def test_a_result_without_usable_images(fake: FakeFal, kind: Kind, words: str) -> None:
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message


@pytest.mark.parametrize(("answer", "kind", "words", "after"), [
    (fake_module.UNAUTHORIZED, Kind.AUTH, "refused the API key (HTTP 401)", None),
    ((403, {"detail": "User is locked. Reason: Exhausted balance."}, {}), Kind.AUTH,
     "refused the API key (HTTP 403)", None),
    (fake_module.NOT_FOUND, Kind.UPSTREAM_BROKEN, "Application not found", None),
    (fake_module.PROMPT_MISSING, Kind.BAD_REQUEST, "body.prompt: field required", None),
    (fake_module.CONTENT_POLICY, Kind.CONTENT_BLOCKED, "flagged by a content checker", None),
    ((429, {"detail": "Too many requests"}, {"retry-after": "7"}), Kind.RATE_LIMITED,
     "rate limit", 7.0),
    ((500, {"detail": "Internal server error"}, {}), Kind.UPSTREAM_BROKEN, "HTTP 500", None),
    ((503, {"detail": "Service unavailable"}, {"retry-after": "4"}), Kind.OVERLOADED,
     "HTTP 503", 4.0),
    (fake_module.REQUEST_TIMEOUT, Kind.TIMEOUT, "Request timed out", None),
    ((500, {"detail": "Runner did not start", "error_type": "startup_timeout"}, {}),
     Kind.TIMEOUT, "did not start", None),
])
def test_submit_errors_map_to_their_class(answer: fake_module.Reply, kind: Kind, words: str,
                                          after: float | None) -> None:
    fake = FakeFal(submit_reply=answer)
    failure = failure_of(fake, make_request(), make_route())
    assert (failure.kind, failure.status, failure.retry_after_s) == (kind, answer[0], after)
    assert words in failure.message and "https://" not in failure.message
    assert len(fake.seen) == 1  # a refused submit is never polled nor re-sent


@pytest.mark.parametrize(("request_", "options", "answer", "kind", "words"), [
    (make_request(prompt=""), {}, None, Kind.BAD_REQUEST, "body.prompt: field required"),
    (edit_request(), {"fields": {"images": ""}}, None, Kind.BAD_REQUEST, "body.image_urls"),
    (make_request(), {"resolutions": {"2K": "2k"}}, None, Kind.BAD_REQUEST, "body.resolution"),
    (make_request(), {}, fake_module.CONTENT_POLICY, Kind.CONTENT_BLOCKED, "content checker"),
    (make_request(), {}, (422, {"detail": [{"loc": ["body", "safety_tolerance"],
                                            "msg": "Input should be '1' to '6'",
                                            "type": "one_of"}]}, {}),
     Kind.BAD_REQUEST, "body.safety_tolerance"),
    (make_request(), {}, fake_module.NOT_FOUND, Kind.UPSTREAM_BROKEN, "no such endpoint"),
])
def test_errors_surface_only_when_the_result_is_fetched(
        request_: ImageRequest, options: dict[str, Any], answer: fake_module.Reply | None,
        kind: Kind, words: str) -> None:
    fake = FakeFal(result_reply=answer)
    failure = failure_of(fake, request_, make_route(options))
    assert failure.kind is kind and words in failure.message
    job = only_job(fake)  # the submit was accepted and the request ran to COMPLETED
    assert job.answered[-1] == "COMPLETED"
    assert str(fake.seen[-1].url) == f"{BASE_URL}/{MODEL}/requests/{job.id}"


@pytest.mark.parametrize(("fake", "kind", "words"), [
    (FakeFal(completed_extra={"error": "Request timed out", "error_type": "request_timeout"}),
     Kind.TIMEOUT, "Request timed out"),
    (FakeFal(completed_extra={"error": "NSFW content detected"}), Kind.CONTENT_BLOCKED, "NSFW"),
    (FakeFal(completed_extra={"error": "Runner gone", "error_type": "runner_disconnected"}),
     Kind.UPSTREAM_BROKEN, "Runner gone"),
    (FakeFal(states=("IN_QUEUE", "FAILED")), Kind.UPSTREAM_BROKEN, "FAILED"),
])
def test_a_status_naming_an_error_fails_without_the_result(fake: FakeFal, kind: Kind,
                                                           words: str) -> None:
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message
    assert fake.seen[-1].url.path.endswith("/status")


def test_transient_status_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "TRANSIENT_RETRY_S", 0.01)
    fake = FakeFal(status_replies=[(503, {"detail": "Service unavailable"}, {}),
                                   (429, {"detail": "Too many requests"}, {})])
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert only_job(fake).answered == ["IN_PROGRESS", "COMPLETED"]
    assert sum(s.url.path.endswith("/status") for s in fake.seen) == 4


@pytest.mark.parametrize(("changes", "words"), [
    ({"submit_reply": (200, {"status": "IN_QUEUE"}, {})}, "no request id"),
    ({"submit_reply": (200, [], {})}, "malformed submit"),
    ({"status_replies": [(200, ["IN_QUEUE"], {})]}, "malformed status"),
    ({"status_replies": [fake_module.NOT_FOUND]}, "no such endpoint"),
    ({"result_reply": (200, None, {})}, "malformed result"),
    ({"result_reply": (200, {"images": [{"url": f"https://{CDN_HOST}/files/gone.png"}]}, {})},
     "HTTP 404"),
])
def test_malformed_or_missing_answers_are_upstream_broken(changes: dict[str, Any],
                                                          words: str) -> None:
    failure = failure_of(FakeFal(**changes), make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


@pytest.mark.parametrize(("key", "answer", "calls"), [
    ("fal-wrong-secret", None, 1), (None, None, 0),
    ("test-key", (401, {"detail": "Invalid API key: test-key"}, {}), 1),
])
def test_a_wrong_or_missing_key_is_auth_and_never_echoed(
        key: str | None, answer: fake_module.Reply | None, calls: int) -> None:
    fake = FakeFal(submit_reply=answer)
    failure = failure_of(fake, make_request(), make_route(key=key))
    assert failure.kind is Kind.AUTH
    assert "fal-wrong" not in failure.message and "test-key" not in failure.message
    assert len(fake.seen) == calls


@pytest.mark.parametrize("host", ["evil.example.com", "v3.fal.media.evil.example"])
def test_output_on_a_host_not_allowed_is_refused_before_any_request_goes_there(
        host: str) -> None:
    fake = FakeFal(cdn_host=host)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert all(s.url.host != host for s in fake.seen)


def test_a_status_url_on_another_host_is_refused_and_gets_no_key() -> None:
    elsewhere = "https://queue.fal.run.evil.example/fal-ai/x/requests/r1"
    fake = FakeFal(submit_reply=(200, {"request_id": "r1", "status_url": f"{elsewhere}/status",
                                       "response_url": elsewhere}, {}))
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert len(fake.seen) == 1
    steps = flow(make_request(), make_route())
    next(steps)
    steps.send(reply({"request_id": "r1", "status_url": f"{elsewhere}/status"}))
    poll = steps.send(None)
    assert isinstance(poll, UpstreamCall) and poll.headers == {}


# fal cancels only while queued; a running request refuses (400) and still times out.
@pytest.mark.parametrize(("states", "canceled"), [(("IN_QUEUE",), True),
                                                  (("IN_QUEUE", "IN_PROGRESS"), False)])
def test_max_wait_cancels_the_request_and_times_out(states: tuple[str, ...],
                                                    canceled: bool) -> None:
    fake = FakeFal(states=states)
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 0.1}))
    assert failure.kind is Kind.TIMEOUT and "0.1 s" in failure.message
    cancel, job = fake.seen[-1], only_job(fake)
    assert (cancel.method, str(cancel.url)) == (
        "PUT", f"{BASE_URL}/{MODEL}/requests/{job.id}/cancel")
    assert cancel.headers["authorization"] == "Key test-key"
    assert job.canceled is canceled


@pytest.mark.parametrize("fake", [FakeFal(delay_s=0.3), FakeFal(states=("IN_QUEUE",))])
def test_a_slow_answer_or_a_long_queue_ends_at_the_request_deadline(fake: FakeFal) -> None:
    started = time.monotonic()
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 600}), within_s=0.2)
    assert failure.kind is Kind.TIMEOUT and "deadline" in failure.message
    assert time.monotonic() - started < 1.0


def test_a_timeout_thrown_in_by_the_driver_yields_the_cancel_call() -> None:
    steps = flow(make_request(), make_route())
    next(steps)
    cancel_url = f"{BASE_URL}/fal-ai/x/requests/r1/cancel"
    assert isinstance(steps.send(reply({"request_id": "r1", "cancel_url": cancel_url})), Sleep)
    timeout = UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached"))
    cancel = steps.throw(timeout)
    assert isinstance(cancel, UpstreamCall)
    assert (cancel.kind, cancel.method, cancel.url, cancel.headers) == (
        "cancel", "PUT", cancel_url, KEY)
    with pytest.raises(UpstreamError) as caught:
        steps.send(reply({"status": "CANCELLATION_REQUESTED"}, 202))
    assert caught.value is timeout


# --- End to end: openai SDK -> Switchyard -> fake fal -------------------------------------

PROVIDERS_TOML = """
[fal]
protocol = "fal"
base_url = "https://queue.fal.run"
key_env = "FAL_KEY"
timeout_s = 60
max_in_flight = 8
allowed_hosts = ["fal.media", "*.fal.media", "storage.googleapis.com"]
options = { poll_interval_s = 0.01, poll_interval_max_s = 0.05, max_wait_s = 30 }
"""
MODEL_TOML = kit.nano_banana_2("""
[[routes]]
provider = "fal"
upstream_model = "fal-ai/nano-banana-2"
typical_latency_s = 15
price.per_image = { "0.5K" = 0.06, "1K" = 0.08, "2K" = 0.12, "4K" = 0.16 }
""")


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-2": MODEL_TOML}, {"FAL_KEY": "test-key"})
    with kit.switchyard(tmp_path, "fal", catalog) as start:
        yield start


def test_e2e_generate_through_the_sdk(switchyard: Start,
                                      validate: Callable[[str, Any], None]) -> None:
    fake = FakeFal()
    raw = switchyard(fake).images.with_raw_response.generate(
        model="nano-banana-2", prompt="a red fox", n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "fal"
    assert raw.headers["x-switchyard-cost-usd"] == "0.160000"
    (submit,) = fake.submits()
    assert submit.headers["authorization"] == "Key test-key"
    assert submit.json["num_images"] == 2 and submit.json["aspect_ratio"] == "3:2"
    kit.assert_two_pngs(raw, geometry.pixels("3:2", "1K"))


def test_e2e_edit_uploads_the_image_to_the_edit_endpoint(switchyard: Start) -> None:
    fake = FakeFal()
    upload = kit.red_png()
    result = switchyard(fake).images.edit(model="nano-banana-2", prompt="make it blue",
                                          image=("red.png", upload, "image/png"))
    assert result.data and result.data[0].b64_json
    (submit,) = fake.submits()
    assert str(submit.url) == f"{SUBMIT_URL}/edit"
    assert submit.json["image_urls"] == [kit.data_uri(upload)]
    assert submit.json["aspect_ratio"] == "auto"


@pytest.mark.parametrize(("fake", "config", "status", "code", "after"), [
    (FakeFal(result_reply=fake_module.CONTENT_POLICY), {}, 400, "moderation_blocked", None),
    (FakeFal(result_reply=fake_module.PROMPT_MISSING), {}, 400, "upstream_rejected_request",
     None),
    (FakeFal(submit_reply=(429, {"detail": "Too many requests"}, {"retry-after": "7"})), {},
     429, "upstream_rate_limited", "7"),
    (FakeFal(states=("IN_QUEUE",)), {"request_timeout_s": 0.3}, 504, "upstream_timeout", None),
])
def test_e2e_failures_are_openai_errors(switchyard: Start, validate: Callable[[str, Any], None],
                                        fake: FakeFal, config: dict[str, Any], status: int,
                                        code: str, after: str | None) -> None:
    answered, body, retry_after = kit.error_of(switchyard(fake, **config), validate)
    assert (answered, body["error"]["code"]) == (status, code)
    assert retry_after == after


def test_a_5xx_result_is_the_outcome_not_a_wait_for_the_deadline() -> None:
    """fal's result endpoint answers a failed run's error for good: it is not retried, so the
    router still has time to fail over."""
    started = time.monotonic()
    fake = FakeFal(result_reply=(500, {"detail": "Internal error while running the model"}, {}))
    failure = failure_of(fake, make_request(), make_route(), within_s=5.0)
    assert failure.kind is Kind.UPSTREAM_BROKEN
    assert time.monotonic() - started < 1.0
    assert sum(1 for s in fake.seen if s.method == "GET" and "status" not in s.url.path) == 1
