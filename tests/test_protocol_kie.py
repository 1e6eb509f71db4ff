"""The kie protocol against a fake Kie.ai: exact requests, every state and error shape (codes
inside HTTP 200 included), uploads, the callback signature, and end to end through the official
openai SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import geometry
from proxy.domain import InputImage
from proxy.failures import Kind
from proxy.providers import flows
from proxy.providers.base import Sleep, UpstreamCall
from proxy.providers.kie import ADAPTER, flow, validate, verify_webhook
from tests import protocol_kit as kit
from tests.fakes import kie as fake_module
from tests.fakes.kie import BASE_URL, RESULT_HOST, UPLOAD_URL, FakeKie, Task, envelope
from tests.protocol_kit import FAST, PNG, Start, decoded, edit_request, make_request, reply

CREATE_URL = f"{BASE_URL}/api/v1/jobs/createTask"
RECORD_URL = f"{BASE_URL}/api/v1/jobs/recordInfo"
# google/nano-banana's vocabulary, with its edits served by a second model id.
NANO_BANANA = {"fields": {"aspect_ratio": "image_size", "resolution": "",
                          "images": "image_urls"},
               "output_formats": {"jpeg": "jpeg"}, "edit_model": "google/nano-banana-edit"}
KIE = kit.Upstream("kie", BASE_URL, "KIE_API_KEY", (RESULT_HOST, "*.aiquickdraw.com"),
                   "nano-banana-2", "0.06", tiers=("1K", "2K", "4K"))

make_route = KIE.route
run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def only_task(fake: FakeKie) -> Task:
    (task,) = fake.tasks.values()
    return task


def record(state: str, **fields: Any) -> dict[str, Any]:
    return {"code": 200, "msg": "success", "data": {"taskId": "t1", "state": state, **fields}}


# --- The task flow ---------------------------------------------------------------------------

def test_a_task_walks_every_state_with_the_exact_requests_and_downloads_the_image() -> None:
    fake = FakeKie()
    result = run(fake, make_request(), make_route())
    task = only_task(fake)
    assert task.answered == ["waiting", "queuing", "generating", "success"]
    create, *polls, download = fake.seen
    assert (create.method, str(create.url)) == ("POST", CREATE_URL)
    assert create.headers["authorization"] == "Bearer test-key"
    assert create.headers["content-type"] == "application/json"
    assert create.json == {"model": "nano-banana-2", "input": {
        "prompt": "a banana astronaut", "aspect_ratio": "16:9", "resolution": "2K",
        "output_format": "png"}}
    assert [(p.method, str(p.url)) for p in polls] == [
        ("GET", f"{RECORD_URL}?taskId={task.id}")] * 4
    assert all(p.headers["authorization"] == "Bearer test-key" for p in polls)
    # Result files are public on Kie's file host: the key never goes there.
    assert download.url.host == RESULT_HOST and "authorization" not in download.headers
    assert download.headers["user-agent"] == "Mozilla/5.0 (compatible; Switchyard)"
    (image,) = result.images
    assert result.upstream_id == task.id
    assert base64.b64decode(image.b64) == fake.files[download.url.path]
    assert image.mime == "image/png"
    assert decoded(image.b64).size == geometry.pixels("16:9", "2K")


def test_each_state_gets_its_next_step_and_polls_back_off() -> None:
    steps = flow(make_request(), make_route({"poll_backoff": 2, "poll_interval_max_s": 0.03}))
    create = next(steps)
    assert isinstance(create, UpstreamCall) and create.kind == "submit"
    sleeps = [steps.send(reply(envelope(200, "success", {"taskId": "t1"})[1]))]
    for state in ("waiting", "queuing", "generating"):
        poll = steps.send(None)
        assert isinstance(poll, UpstreamCall) and (poll.kind, poll.method) == ("poll", "GET")
        assert poll.url == f"{RECORD_URL}?taskId=t1"
        sleeps.append(steps.send(reply(record(state))))
    assert all(isinstance(s, Sleep) for s in sleeps)
    assert [s.seconds for s in sleeps if isinstance(s, Sleep)] == [0.01, 0.02, 0.03, 0.03]
    steps.send(None)
    url = f"https://{RESULT_HOST}/h/t1/a.png"
    fetch = steps.send(reply(record("success", resultJson=orjson.dumps(
        {"resultUrls": [url]}).decode())))
    assert isinstance(fetch, UpstreamCall) and (fetch.kind, fetch.url) == ("fetch", url)


def test_an_unknown_state_is_polled_through() -> None:
    fake = FakeKie(states=("waiting", "rendering", "success"))
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert only_task(fake).answered == ["waiting", "rendering", "success"]


def test_failed_ends_a_task_as_fail_does() -> None:
    fake = FakeKie(states=("generating", "failed", "failed"), fail_state="failed")
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "failCode 501" in failure.message
    assert only_task(fake).answered == ["generating", "failed"]


def test_state_values_are_route_data() -> None:
    fake = FakeKie(states=("queued", "running", "done"), success_state="done")
    options = {"pending_states": ["queued", "running"], "success_states": ["done"]}
    assert len(run(fake, make_request(), make_route(options)).images) == 1
    fake = FakeKie(states=("queued", "error"), fail_state="error", fail_msg="model crashed")
    failure = failure_of(fake, make_request(), make_route({"failed_states": ["error"]}))
    assert failure.kind is Kind.UPSTREAM_BROKEN and "model crashed" in failure.message


def test_record_field_names_are_route_data() -> None:
    options = {"record_fields": {"state": "status", "result": "output", "urls": "images"},
               "success_states": ["SUCCEEDED"]}
    steps = flow(make_request(), make_route(options))
    next(steps)
    steps.send(reply(envelope(200, "success", {"taskId": "t1"})[1]))
    steps.send(None)
    url = f"https://{RESULT_HOST}/h/t1/b.png"
    output = orjson.dumps({"images": [url]}).decode()
    fetch = steps.send(reply({"code": 200, "msg": "success",
                              "data": {"taskId": "t1", "status": "SUCCEEDED", "output": output}}))
    assert isinstance(fetch, UpstreamCall) and fetch.url == url


def test_a_result_json_given_as_an_object_is_taken_as_well() -> None:
    fake = FakeKie(states=("success",))
    fake.files["/h/x/out.png"] = fake.image_for({"output_format": "png"})[0]
    fake.result_json = {"resultUrls": [f"https://{RESULT_HOST}/h/x/out.png"]}
    assert run(fake, make_request(), make_route()).images[0].mime == "image/png"


def test_n_runs_one_task_per_image() -> None:
    fake = FakeKie(states=("generating", "success"))
    result = run(fake, make_request(n=3), make_route())
    assert len(fake.creates()) == 3 and len(fake.tasks) == 3
    assert len(result.images) == 3 and result.upstream_id in fake.tasks


def test_field_names_formats_and_constants_are_route_data() -> None:
    fake = FakeKie(states=("success",))
    options = {**NANO_BANANA, "callback_url": "https://switchyard.example/hooks/kie"}
    result = run(fake, make_request(output_format="jpeg"), make_route(options,
                                                                      model="google/nano-banana"))
    assert fake.seen[0].json == {
        "model": "google/nano-banana", "callBackUrl": "https://switchyard.example/hooks/kie",
        "input": {"prompt": "a banana astronaut", "image_size": "16:9", "output_format": "jpeg"}}
    assert result.images[0].mime == "image/jpeg"
    fake = FakeKie(states=("success",))
    options = {"extra_input": {"google_search": True}, "resolutions": {"2K": "4K"}}
    run(fake, make_request(output_format="webp", seed=7), make_route(options))
    assert fake.seen[0].json["input"] == {
        "google_search": True, "prompt": "a banana astronaut", "aspect_ratio": "16:9",
        "resolution": "4K", "output_format": "png"}


def test_an_edit_goes_to_the_edit_model_when_the_route_names_one() -> None:
    fake = FakeKie(states=("success",))
    request = edit_request(InputImage("image/jpeg", url="https://example.com/a.jpg"))
    run(fake, request, make_route(NANO_BANANA, model="google/nano-banana"))
    assert fake.seen[0].json == {"model": "google/nano-banana-edit", "input": {
        "prompt": "a banana astronaut", "image_size": "auto", "output_format": "png",
        "image_urls": ["https://example.com/a.jpg"]}}


def test_option_mistakes_are_named_when_the_catalog_loads() -> None:
    assert validate({**FAST, **NANO_BANANA, "codes": {"455": "rate_limited"},
                     "fail_codes": {"1001": "content_blocked"}, "success_states": ["done"],
                     "callback_url": "https://x.example/hook"}) == []
    assert validate({"poll_intervall_s": 1, "codes": {"455": "slow", "abc": "auth"},
                     "fail_codes": {"7": "nope"}, "failed_states": "fail"}) == [
        "options.poll_intervall_s: unknown option",
        "options.codes.455: 'slow' is not one of auth, bad_request, content_blocked, "
        "overloaded, rate_limited, timeout, upstream_broken",
        "options.codes.abc: not a numeric code",
        "options.fail_codes.7: 'nope' is not one of auth, bad_request, content_blocked, "
        "overloaded, rate_limited, timeout, upstream_broken",
        "options.failed_states: must be a list"]


# --- Reference images ------------------------------------------------------------------------

def test_uploaded_bytes_and_data_uris_go_to_kies_file_api_and_urls_pass_as_given() -> None:
    fake = FakeKie(states=("success",))
    data_url = "data:image/jpeg;base64," + base64.b64encode(b"jpeg-bytes").decode()
    request = edit_request(InputImage("image/png", data=PNG),
                           InputImage("image/jpeg", url="https://example.com/a.jpg"),
                           InputImage("image/jpeg", url=data_url))
    run(fake, request, make_route())
    first, second, create = fake.seen[:3]
    assert (first.method, str(first.url)) == ("POST", UPLOAD_URL)
    assert first.headers["authorization"] == "Bearer test-key"
    assert first.json == {"base64Data": "data:image/png;base64," + base64.b64encode(PNG).decode(),
                          "uploadPath": "switchyard"}
    assert second.json == {"base64Data": data_url, "uploadPath": "switchyard"}
    uploaded = list(fake.uploads)
    assert [fake.uploads[u] for u in uploaded] == [PNG, b"jpeg-bytes"]
    assert create.json["input"]["image_input"] == [uploaded[0], "https://example.com/a.jpg",
                                                   uploaded[1]]
    assert create.json["input"]["aspect_ratio"] == "auto"
    assert create.json["input"]["resolution"] == "1K"


def test_the_upload_target_is_route_data() -> None:
    fake = FakeKie(states=("success",))
    options = {"upload_url": f"{UPLOAD_URL}?region=eu", "upload_path": "team/refs"}
    run(fake, edit_request(InputImage("image/png", data=PNG)), make_route(options))
    assert str(fake.seen[0].url) == f"{UPLOAD_URL}?region=eu"
    assert fake.seen[0].json["uploadPath"] == "team/refs"


def test_inline_images_sends_data_uris_which_kie_refuses() -> None:
    fake = FakeKie()
    failure = failure_of(fake, edit_request(), make_route({"inline_images": True}))
    assert failure.kind is Kind.BAD_REQUEST and "not file content" in failure.message
    (create,) = fake.seen
    assert create.json["input"]["image_input"][0].startswith("data:image/png;base64,")


def test_without_an_upload_url_bytes_are_refused_before_any_call_and_urls_still_pass() -> None:
    fake = FakeKie(states=("success",))
    failure = failure_of(fake, edit_request(), make_route({"upload_url": ""}))
    assert failure.kind is Kind.BAD_REQUEST and "'image'" in failure.message
    assert fake.seen == []
    url_only = edit_request(InputImage("image/jpeg", url="https://example.com/a.jpg"))
    assert len(run(fake, url_only, make_route({"upload_url": ""})).images) == 1


@pytest.mark.parametrize(("answer", "kind", "words"), [
    ((200, {"success": False, "code": 401, "msg": "Authentication failed: Invalid API Key"}, {}),
     Kind.AUTH, "Invalid API Key"),
    ((200, {"success": False, "code": 500, "msg": "Internal server error"}, {}),
     Kind.UPSTREAM_BROKEN, "Internal server error"),
    ((200, {"success": True, "code": 200, "msg": "ok", "data": {"fileName": "x.png"}}, {}),
     Kind.UPSTREAM_BROKEN, "no file URL"),
    ((200, {"success": True, "code": 200, "msg": "ok", "data": None}, {}),
     Kind.UPSTREAM_BROKEN, "malformed upload reply"),
])
def test_a_failed_upload_ends_the_attempt_before_any_task(answer: fake_module.Reply, kind: Kind,
                                                          words: str) -> None:
    fake = FakeKie(upload_reply=answer)
    failure = failure_of(fake, edit_request(), make_route())
    assert failure.kind is kind and words in failure.message
    assert fake.creates() == []


def test_a_mask_is_refused_unless_the_route_sends_it_as_a_reference() -> None:
    request = edit_request(InputImage("image/png", data=b"img"),
                           mask=InputImage("image/png", data=b"mask"))
    fake = FakeKie(states=("success",))
    failure = failure_of(fake, request, make_route())
    assert failure.kind is Kind.BAD_REQUEST and "mask" in failure.message
    assert fake.seen == []
    run(fake, request, make_route({"mask_as_reference": True}))
    assert len(fake.creates()[0].json["input"]["image_input"]) == 2
    assert list(fake.uploads.values()) == [b"img", b"mask"]


# --- Errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "kind", "words", "code"), [
    (fake_module.UNAUTHORIZED, Kind.AUTH, "access permissions", 401),
    (fake_module.NO_CREDITS, Kind.AUTH, "Credits insufficient", 402),
    (envelope(404, "model not found"), Kind.UPSTREAM_BROKEN, "model not found", 404),
    (envelope(422, "aspect_ratio is invalid"), Kind.BAD_REQUEST, "aspect_ratio", 422),
    (fake_module.RATE_LIMITED, Kind.RATE_LIMITED, "frequency is too high", 429),
    (fake_module.MAINTENANCE, Kind.OVERLOADED, "maintenance", 455),
    (fake_module.SERVER_ERROR, Kind.UPSTREAM_BROKEN, "Server exception", 500),
    (envelope(501, "Generation failed"), Kind.UPSTREAM_BROKEN, "Generation failed", 501),
    (envelope(505, "The feature is disabled"), Kind.UPSTREAM_BROKEN, "disabled", 505),
    (envelope(400, "Prompt rejected by the content policy"), Kind.CONTENT_BLOCKED,
     "content policy", 400),
    (envelope(403, "Forbidden"), Kind.AUTH, "Forbidden", 403),
    ((401, {"code": 401, "msg": "Unauthorized"}, {}), Kind.AUTH, "Unauthorized", 401),
    ((502, "<html>Bad gateway</html>", {}), Kind.OVERLOADED, "Bad gateway", 502),
    ((500, {"code": 200, "msg": "success"}, {}), Kind.UPSTREAM_BROKEN, "code 500", 500),
])
def test_create_errors_map_to_their_class(answer: fake_module.Reply, kind: Kind, words: str,
                                          code: int) -> None:
    fake = FakeKie(submit_reply=answer)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message
    assert failure.status == code
    # The billing URL (and its query) in the 402 message is not passed on.
    assert "http" not in failure.message and "secret" not in failure.message
    assert len(fake.seen) == 1


def test_input_outside_the_models_schema_is_a_bad_request() -> None:
    route = make_route({"output_formats": {"png": "webp"}})
    failure = failure_of(FakeKie(), make_request(), route)
    assert failure.kind is Kind.BAD_REQUEST and "output_format must be one of" in failure.message


def test_codes_are_route_data() -> None:
    route = make_route({"codes": {"455": "rate_limited", "501": "content_blocked"}})
    for answer, kind in ((fake_module.MAINTENANCE, Kind.RATE_LIMITED),
                         (envelope(501, "Generation failed"), Kind.CONTENT_BLOCKED)):
        assert failure_of(FakeKie(submit_reply=answer), make_request(), route).kind is kind


@pytest.mark.parametrize(("answer", "kind", "after"), [
    ((429, {"code": 429, "msg": "Too many requests"}, {"retry-after": "7"}),
     Kind.RATE_LIMITED, 7.0),
    ((*fake_module.RATE_LIMITED[:2], {"retry-after": "3"}), Kind.RATE_LIMITED, 3.0),
    (fake_module.RATE_LIMITED, Kind.RATE_LIMITED, None),
    ((*fake_module.MAINTENANCE[:2], {"retry-after": "30"}), Kind.OVERLOADED, 30.0),
    ((*envelope(422, "bad input")[:2], {"retry-after": "5"}), Kind.BAD_REQUEST, None),
])
def test_retry_after_is_taken_where_given(answer: fake_module.Reply, kind: Kind,
                                          after: float | None) -> None:
    failure = failure_of(FakeKie(submit_reply=answer), make_request(), make_route())
    assert (failure.kind, failure.retry_after_s) == (kind, after)


@pytest.mark.parametrize(("changes", "options", "kind", "words"), [
    ({}, {}, Kind.UPSTREAM_BROKEN, "failCode 501): Internal error"),
    ({"fail_code": "400", "fail_msg": "Your image was flagged as NSFW"}, {},
     Kind.CONTENT_BLOCKED, "NSFW"),
    ({"fail_code": 1001, "fail_msg": "rejected"}, {"fail_codes": {"1001": "content_blocked"}},
     Kind.CONTENT_BLOCKED, "rejected"),
    ({"fail_msg": "Refused by house rules"}, {"content_block_markers": ["house rules"]},
     Kind.CONTENT_BLOCKED, "house rules"),
    ({"fail_code": None, "fail_msg": ""}, {}, Kind.UPSTREAM_BROKEN, "task ended fail"),
])
def test_a_failed_task_inside_http_200_is_classified_without_a_download(
        changes: dict[str, Any], options: dict[str, Any], kind: Kind, words: str) -> None:
    fake = FakeKie(states=("generating", "fail"), **changes)
    failure = failure_of(fake, make_request(), make_route(options))
    assert failure.kind is kind and words in failure.message
    assert only_task(fake).answered == ["generating", "fail"]
    assert fake.seen[-1].url.path == "/api/v1/jobs/recordInfo" and fake.files == {}


def test_transient_poll_answers_are_polled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "TRANSIENT_RETRY_S", 0.01)
    fake = FakeKie(states=("generating", "success"), poll_replies=[
        fake_module.MAINTENANCE, fake_module.SERVER_ERROR, fake_module.RATE_LIMITED,
        (503, {"code": 503, "msg": "Service Unavailable"}, {})])
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert only_task(fake).answered == ["generating", "success"]
    assert len(fake.polls()) == 6


@pytest.mark.parametrize(("answer", "options", "kind"), [
    (fake_module.NOT_FOUND, {}, Kind.UPSTREAM_BROKEN),
    (fake_module.UNAUTHORIZED, {}, Kind.AUTH),
    (fake_module.MAINTENANCE, {"poll_retry_codes": []}, Kind.OVERLOADED),
])
def test_other_poll_codes_end_the_attempt(answer: fake_module.Reply, options: dict[str, Any],
                                          kind: Kind) -> None:
    fake = FakeKie(poll_replies=[answer])
    failure = failure_of(fake, make_request(), make_route(options))
    assert failure.kind is kind and str(answer[1]["msg"]) in failure.message
    assert len(fake.polls()) == 1


@pytest.mark.parametrize(("changes", "words"), [
    ({"submit_reply": envelope(200, "success", {})}, "no task id"),
    ({"submit_reply": envelope(200, "success", None)}, "malformed createTask reply"),
    ({"submit_reply": (200, [], {})}, "malformed createTask reply"),
    ({"poll_replies": [envelope(200, "success", "waiting")]}, "malformed task record"),
    ({"result_json": "{not json"}, "without result URLs"),
    ({"result_json": '{"resultUrls": []}'}, "without result URLs"),
    ({"fetch_status": 404}, "HTTP 404"),
])
def test_malformed_or_missing_answers_are_upstream_broken(changes: dict[str, Any],
                                                          words: str) -> None:
    failure = failure_of(FakeKie(**changes), make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


@pytest.mark.parametrize(("key", "calls"), [("kie-wrong-secret", 1), (None, 0)])
def test_a_wrong_or_missing_key_is_auth_and_never_echoed(key: str | None, calls: int) -> None:
    fake = FakeKie()
    failure = failure_of(fake, make_request(), make_route(key=key))
    assert failure.kind is Kind.AUTH and "kie-wrong" not in failure.message
    assert len(fake.seen) == calls


@pytest.mark.parametrize("host", ["evil.example.com", "tempfile.aiquickdraw.com.evil.example"])
def test_a_result_on_a_host_not_allowed_is_refused_before_any_request_goes_there(
        host: str) -> None:
    fake = FakeKie(result_host=host)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert all(s.url.host != host for s in fake.seen)


def test_the_download_agent_is_route_data() -> None:
    fake = FakeKie(states=("success",), refused_agents=("python-httpx",))
    assert len(run(fake, make_request(), make_route()).images) == 1
    failure = failure_of(fake, make_request(), make_route({"user_agent": ""}))
    assert failure.kind is Kind.UPSTREAM_BROKEN and "HTTP 403" in failure.message
    assert fake.seen[-1].headers["user-agent"].startswith("python-httpx")


def test_max_wait_times_out_and_sends_nothing_more() -> None:
    fake = FakeKie(states=("waiting",))
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 0.1}))
    assert failure.kind is Kind.TIMEOUT and "0.1 s" in failure.message
    # Kie has no cancel call: the create and the polls are all that was sent.
    assert len(fake.seen) == 1 + len(fake.polls()) and len(fake.polls()) >= 2


@pytest.mark.parametrize("fake", [FakeKie(delay_s=0.3), FakeKie(states=("queuing",))])
def test_a_slow_answer_or_a_long_queue_ends_at_the_request_deadline(fake: FakeKie) -> None:
    started = time.monotonic()
    failure = failure_of(fake, make_request(), make_route({"max_wait_s": 600}), within_s=0.2)
    assert failure.kind is Kind.TIMEOUT and "deadline" in failure.message
    assert time.monotonic() - started < 1.0


# --- Callback signature ----------------------------------------------------------------------

SECRET = "whk-test-secret"
NOW = 1_765_178_700.0
CALLBACK: dict[str, Any] = {"code": 200, "msg": "success",
                             "data": {"taskId": "task_nano-banana-2_1765178625768",
                                      "state": "success", "resultJson": '{"resultUrls":'
                                      '["https://tempfile.aiquickdraw.com/h/a.png"]}'}}


def signed(body: dict[str, Any], stamp: int | str = int(NOW), task_id: str | None = None,
           secret: str = SECRET) -> dict[str, str]:
    """Headers as Kie would send them, the signature made over exactly this timestamp text."""
    if task_id is None:
        task_id = body["data"].get("taskId") or body["data"].get("task_id")
    message = f"{task_id}.{stamp}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return {"X-Webhook-Timestamp": str(stamp),
            "X-Webhook-Signature": base64.b64encode(digest).decode()}


def test_a_signed_callback_verifies() -> None:
    assert verify_webhook(signed(CALLBACK), orjson.dumps(CALLBACK), SECRET, NOW)
    lowered = {k.lower(): v for k, v in signed(CALLBACK, int(NOW) - 299).items()}
    assert verify_webhook(lowered, orjson.dumps(CALLBACK), SECRET, NOW)
    # Kie's own verification sample reads data.task_id.
    snake = {"code": 200, "data": {"task_id": "task_1", "state": "success"}}
    assert verify_webhook(signed(snake), orjson.dumps(snake), SECRET, NOW)


def test_the_body_is_not_signed_so_a_verified_callback_proves_only_the_task_id() -> None:
    forged = {**CALLBACK, "data": {**CALLBACK["data"], "state": "fail"}}
    assert verify_webhook(signed(CALLBACK), orjson.dumps(forged), SECRET, NOW)


@pytest.mark.parametrize("tamper", [
    lambda h, b: ({**h, "X-Webhook-Signature": "A" + h["X-Webhook-Signature"][1:]}, b),
    lambda h, b: (h, b.replace(b"1765178625768", b"1765178625769")),
    lambda h, b: ({**h, "X-Webhook-Timestamp": str(int(NOW) - 1)}, b),
    lambda h, b: (signed(CALLBACK, secret="another-secret"), b),
    lambda h, b: ({**h, "X-Webhook-Signature": h["X-Webhook-Signature"].encode().hex()}, b),
])
def test_a_tampered_callback_is_rejected(
        tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]) -> None:
    headers, body = tamper(signed(CALLBACK), orjson.dumps(CALLBACK))
    assert not verify_webhook(headers, body, SECRET, NOW)


@pytest.mark.parametrize("stamp", [int(NOW) - 301, int(NOW) - 86_400, int(NOW) + 301])
def test_a_replayed_or_future_callback_is_rejected(stamp: int) -> None:
    headers = signed(CALLBACK, stamp)
    assert not verify_webhook(headers, orjson.dumps(CALLBACK), SECRET, NOW)
    assert verify_webhook(headers, orjson.dumps(CALLBACK), SECRET, stamp)
    assert verify_webhook(headers, orjson.dumps(CALLBACK), SECRET, NOW, tolerance_s=86_401)


@pytest.mark.parametrize(("headers", "body", "secret"), [
    ({}, orjson.dumps(CALLBACK), SECRET),
    ({"X-Webhook-Timestamp": str(int(NOW))}, orjson.dumps(CALLBACK), SECRET),
    ({"X-Webhook-Signature": signed(CALLBACK)["X-Webhook-Signature"]}, orjson.dumps(CALLBACK),
     SECRET),
    (signed(CALLBACK, "1765178700.0"), orjson.dumps(CALLBACK), SECRET),
    (signed(CALLBACK, "١٧٦٥١٧٨٧٠٠"), orjson.dumps(CALLBACK), SECRET),  # non-ASCII digits
    (signed(CALLBACK, secret=""), orjson.dumps(CALLBACK), ""),  # no secret: anyone could sign
    (signed(CALLBACK, task_id=""), orjson.dumps({"code": 200, "data": {"state": "success"}}),
     SECRET),
    (signed(CALLBACK, task_id=""), orjson.dumps({"data": {"taskId": "", "task_id": ""}}),
     SECRET),
    (signed(CALLBACK, task_id="None"), orjson.dumps({"code": 200, "data": None}), SECRET),
    (signed(CALLBACK), b"{not json", SECRET),
])
def test_a_callback_missing_its_signature_or_task_id_is_rejected(
        headers: dict[str, str], body: bytes, secret: str) -> None:
    assert not verify_webhook(headers, body, secret, NOW)


# --- End to end: openai SDK -> Switchyard -> fake Kie ----------------------------------------

PROVIDERS_TOML = """
[kie]
protocol = "kie"
base_url = "https://api.kie.ai"
key_env = "KIE_API_KEY"
timeout_s = 60
max_in_flight = 8
allowed_hosts = ["tempfile.aiquickdraw.com", "*.aiquickdraw.com", "tempfile.redpandaai.co"]
options = { poll_interval_s = 0.01, poll_interval_max_s = 0.05, max_wait_s = 30 }
"""
MODEL_TOML = kit.nano_banana_2("""
[[routes]]
provider = "kie"
upstream_model = "nano-banana-2"
typical_latency_s = 20
price.credits = { per_image = { "1K" = 12, "2K" = 18, "4K" = 26 }, usd_per_credit = 0.005 }
""")



@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-2": MODEL_TOML}, {"KIE_API_KEY": "test-key"})
    with kit.switchyard(tmp_path, "kie", catalog) as start:
        yield start


def test_e2e_generate_through_the_sdk_bills_credits(switchyard: Start,
                                                    validate: Callable[[str, Any], None]) -> None:
    fake = FakeKie()
    raw = switchyard(fake).images.with_raw_response.generate(
        model="nano-banana-2", prompt="a red fox", n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == "kie"
    assert raw.headers["x-switchyard-cost-usd"] == "0.120000"  # 2 x 12 credits x $0.005
    creates = fake.creates()
    assert len(creates) == 2 and all(c.headers["authorization"] == "Bearer test-key"
                                     for c in creates)
    assert [c.json["input"] for c in creates] == [{
        "prompt": "a red fox", "aspect_ratio": "3:2", "resolution": "1K",
        "output_format": "png"}] * 2
    kit.assert_two_pngs(raw, geometry.pixels("3:2", "1K"))


def test_e2e_edit_uploads_the_image_then_references_its_url(switchyard: Start) -> None:
    fake = FakeKie(states=("generating", "success"))
    upload = kit.red_png()
    result = switchyard(fake).images.edit(model="nano-banana-2", prompt="make it blue",
                                          image=("red.png", upload, "image/png"))
    assert result.data and result.data[0].b64_json
    (uploaded,) = fake.uploads
    assert fake.uploads[uploaded] == upload
    (create,) = fake.creates()
    assert create.json["input"]["image_input"] == [uploaded]
    assert create.json["input"]["aspect_ratio"] == "auto"


@pytest.mark.parametrize(("fake", "config", "status", "code", "after"), [
    (FakeKie(states=("fail",), fail_msg="Image flagged as NSFW"), {}, 400, "moderation_blocked",
     None),
    (FakeKie(submit_reply=envelope(422, "prompt is required")), {}, 400,
     "upstream_rejected_request", None),
    (FakeKie(submit_reply=fake_module.NO_CREDITS), {}, 502, "upstream_auth_failed", None),
    (FakeKie(submit_reply=(*fake_module.RATE_LIMITED[:2], {"retry-after": "7"})), {}, 429,
     "upstream_rate_limited", "7"),
    (FakeKie(states=("queuing",)), {"request_timeout_s": 0.3}, 504, "upstream_timeout", None),
])
def test_e2e_failures_are_openai_errors(switchyard: Start, validate: Callable[[str, Any], None],
                                        fake: FakeKie, config: dict[str, Any], status: int,
                                        code: str, after: str | None) -> None:
    answered, body, retry_after = kit.error_of(switchyard(fake, **config), validate)
    assert (answered, body["error"]["code"]) == (status, code)
    assert retry_after == after
