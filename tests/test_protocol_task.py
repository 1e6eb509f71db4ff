"""The generic task protocol against fakes of Toapis, OpenOctopus, NewportAI and ApiPass, each
configured by route data alone: exact requests, states in order, every failure class (inside
HTTP 200 too), deadlines, allowed hosts; its JSON paths, templates and option validation; and
end to end through the official openai SDK."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy import catalog as catalog_module
from proxy import geometry, imaging
from proxy.catalog import Catalog, Route
from proxy.config import default_routes_dir
from proxy.domain import Geometry, InputImage
from proxy.failures import Kind
from proxy.providers import ADAPTERS, flows, jsonpath
from proxy.providers.jsonpath import PathError
from proxy.providers.task import ADAPTER, render, validate
from tests import protocol_kit as kit
from tests.fakes.task_hosts import (
    FakeApiPass,
    FakeNewportAI,
    FakeOpenOctopus,
    FakeTaskHost,
    FakeToapis,
    Task,
)
from tests.protocol_kit import PROMPT, decoded, make_request

# --- The four hosts as the shipped catalog has them (routes/providers.toml, and their routes in
# routes/models/nano-banana-2.toml): a broken entry there fails these tests ---------------------

FAKES: dict[str, type[FakeTaskHost]] = {"toapis": FakeToapis, "openoctopus": FakeOpenOctopus,
                                        "newportai": FakeNewportAI, "apipass": FakeApiPass}
KEY_ENV = {"toapis": "TOAPIS_API_KEY", "openoctopus": "OPENOCTOPUS_API_KEY",
           "newportai": "NEWPORTAI_API_KEY", "apipass": "APIPASS_API_KEY"}
HOSTS = tuple(FAKES)
ENVELOPED = ("newportai", "apipass")  # hosts whose replies carry their own success code
# Tests poll fast: route options win over the provider's pacing.
FAST = {"poll_interval_s": 0.01, "poll_interval_max_s": 0.02}


def shipped(hosts: tuple[str, ...]) -> Catalog:
    """The shipped catalog with only these hosts' keys set (so theirs are the only live routes),
    polling fast."""
    catalog = catalog_module.load(default_routes_dir(), {KEY_ENV[h]: "test-key" for h in hosts},
                                  demo=False, protocols=ADAPTERS)
    models = [replace(m, routes=tuple(with_options(r, **FAST) for r in m.routes))
              for m in catalog.models]
    return catalog_module._index(models, list(catalog.providers), catalog.demo)


@pytest.fixture(scope="module")
def routes() -> dict[str, Route]:
    model = shipped(HOSTS).resolve("nano-banana-2")
    assert model is not None
    found = {route.provider.name: route for route in model.routes}
    assert set(found) == set(HOSTS) and {r.provider.protocol for r in found.values()} == {"task"}
    return found


def with_options(route: Route, **options: Any) -> Route:
    return replace(route, options={**route.options, **options})


run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def reported_id(host: str, task: Task) -> str:
    """The task id as the host reports it."""
    return f"task_img_{task.id}" if host == "toapis" else task.id


# --- Each host: exact requests, states, success ----------------------------------------------

SUBMITS = {
    "toapis": ("https://toapis.com/v1/images/generations", {
        "model": "gemini-3.1-flash-image-preview", "prompt": PROMPT, "size": "16:9", "n": 1,
        "metadata": {"resolution": "2K"}}),
    "openoctopus": ("https://api.openoctopus.com/v1/images/generations", {
        "model": "openoctopus/nano-banana-2", "prompt": PROMPT, "size": "2736x1536", "n": 1}),
    "newportai": ("https://api.newportai.com/api/async/nano_banana_2", {
        "prompt": PROMPT, "aspectRatio": "16:9", "resolution": "2K"}),
    "apipass": ("https://api.apipass.invalid/api/v1/jobs/createTask", {
        "model": "nano-banana-2", "input": {"prompt": PROMPT, "aspect_ratio": "16:9",
                                            "resolution": "2K", "output_format": "png"}}),
}
POLLS: dict[str, Callable[[str], tuple[str, str, Any]]] = {
    "toapis": lambda i: ("GET", f"https://toapis.com/v1/images/generations/{i}", None),
    "openoctopus": lambda i: ("GET", f"https://api.openoctopus.com/v1/tasks/{i}", None),
    "newportai": lambda i: ("POST", "https://api.newportai.com/api/getAsyncResult",
                            {"taskId": i}),
    "apipass": lambda i: ("GET", f"https://api.apipass.invalid/api/v1/jobs/recordInfo?taskId={i}",
                          None),
}


@pytest.mark.parametrize("host", HOSTS)
def test_each_host_gets_its_exact_requests_and_the_key_only_on_its_own_host(
        routes: dict[str, Route], host: str) -> None:
    fake = FAKES[host]()
    result = run(fake, make_request(), routes[host])
    submit, *polls, fetch = fake.seen
    url, body = SUBMITS[host]
    assert (submit.kind, submit.method, str(submit.url), submit.json) == ("submit", "POST", url,
                                                                          body)
    task_id = reported_id(host, fake.task())
    assert [(p.kind, p.method, str(p.url), p.json) for p in polls] == [
        ("poll", *POLLS[host](task_id))] * 2
    assert all(s.headers["authorization"] == "Bearer test-key" for s in (submit, *polls))
    assert fetch.kind == "fetch" and fetch.url.host == FAKES[host].FILES_HOST
    assert "authorization" not in fetch.headers
    assert result.upstream_id == task_id


STATE_RUNS = {
    "toapis": ("submitted", "queued", "in_progress", "in_progress", "completed"),
    "openoctopus": ("queued", "queued", "processing", "succeeded"),
    "newportai": (1, 1, 2, 2, 3),
    "apipass": ("queuing", "processing", "processing", "success"),
}


@pytest.mark.parametrize("host", HOSTS)
def test_states_are_followed_in_order_and_real_images_come_back(routes: dict[str, Route],
                                                                host: str) -> None:
    states = STATE_RUNS[host]
    fake = FAKES[host](states=states)
    result = run(fake, make_request(geometry=Geometry("3:2", "1K", None, "size")), routes[host])
    assert fake.task().reported == list(states[1:])
    assert fake.kinds() == ["submit"] + ["poll"] * (len(states) - 1) + ["fetch"]
    (image,) = result.images
    picture = decoded(image.b64)
    assert (image.mime, picture.format) == ("image/png", "PNG")
    assert picture.size == geometry.pixels("3:2", "1K")
    assert base64.b64decode(image.b64) == fake.image_for(fake.task().asked)


def test_apipass_output_format_is_its_own_token_and_jpeg_comes_back_as_jpeg(
        routes: dict[str, Route]) -> None:
    fake = FakeApiPass()
    result = run(fake, make_request(output_format="jpeg"), routes["apipass"])
    assert fake.seen[0].json["input"]["output_format"] == "jpg"
    (image,) = result.images
    assert image.mime == "image/jpeg" and decoded(image.b64).format == "JPEG"


def test_apipass_sends_a_callback_url_only_when_one_is_configured(
        routes: dict[str, Route]) -> None:
    fake = FakeApiPass()
    run(fake, make_request(), routes["apipass"])
    assert "callBackUrl" not in fake.seen[0].json
    hook = "https://switchyard.example.com/hooks/apipass"
    fake = FakeApiPass()
    run(fake, make_request(), with_options(routes["apipass"], callback_url=hook))
    assert fake.seen[0].json["callBackUrl"] == hook and fake.task().asked.callback == hook


@pytest.mark.parametrize(("host", "field", "inner"), [("toapis", "image_urls", False),
                                                      ("apipass", "image_input", True)])
def test_reference_image_urls_are_passed_as_a_list(routes: dict[str, Route], host: str,
                                                   field: str, inner: bool) -> None:
    urls = ("https://example.com/a.png", "https://example.com/b.jpg")
    request = make_request(images=tuple(InputImage("image/png", url=u) for u in urls))
    fake = FAKES[host]()
    run(fake, request, routes[host])
    sent = fake.seen[0].json["input"] if inner else fake.seen[0].json
    assert sent[field] == list(urls) and fake.task().asked.images == list(urls)


@pytest.mark.parametrize(("host", "changes", "words"), [
    ("toapis", {"images": (InputImage("image/png", data=b"\x89PNG-bytes"),)}, "URLs only"),
    ("newportai", {"images": (InputImage("image/png", url="https://example.com/a.png"),)},
     "takes no reference images"),
    ("apipass", {"images": (InputImage("image/png", url="https://example.com/a.png"),),
                 "mask": InputImage("image/png", data=b"mask")}, "'mask'"),
])
def test_unsendable_input_is_refused_before_any_call(routes: dict[str, Route], host: str,
                                                     changes: dict[str, Any],
                                                     words: str) -> None:
    fake = FAKES[host]()
    failure = failure_of(fake, make_request(**changes), routes[host])
    assert failure.kind is Kind.BAD_REQUEST and words in failure.message
    assert fake.seen == []


def test_uploaded_images_go_as_data_uris_when_the_route_allows_them(
        routes: dict[str, Route]) -> None:
    fake = FakeApiPass()
    request = make_request(images=(InputImage("image/png", data=b"\x89PNG-bytes"),))
    failure = failure_of(fake, request, with_options(routes["apipass"], inline_images=True))
    assert fake.seen[0].json["input"]["image_input"] == [
        "data:image/png;base64," + base64.b64encode(b"\x89PNG-bytes").decode()]
    # This host takes URLs only: its 400 comes back as the client's bad request.
    assert failure.kind is Kind.BAD_REQUEST and "image URLs" in failure.message


def test_n_runs_one_task_per_image(routes: dict[str, Route]) -> None:
    fake = FakeToapis()
    result = run(fake, make_request(n=3), routes["toapis"])
    assert len(result.images) == 3 and len(fake.tasks) == 3
    assert all(s.json["n"] == 1 for s in fake.seen if s.kind == "submit")


# --- Failures: inside HTTP 200, HTTP errors, deadlines, hosts --------------------------------

FAILED_CODES = {"toapis": "generation_failed", "openoctopus": None, "newportai": None,
                "apipass": "501"}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(("message", "kind"), [
    ("Generation failed: internal model error", Kind.UPSTREAM_BROKEN),
    ("Your prompt was flagged by the content policy", Kind.CONTENT_BLOCKED),
])
def test_a_task_that_fails_inside_http_200_is_classified(routes: dict[str, Route], host: str,
                                                         message: str, kind: Kind) -> None:
    fake = FAKES[host](error=(message, FAILED_CODES[host]))
    fake.states = (fake.STATES[0], fake.FAILED)
    failure = failure_of(fake, make_request(), routes[host])
    assert failure.kind is kind and message in failure.message
    assert host in failure.message and failure.status is None
    assert fake.kinds() == ["submit", "poll"]


def test_a_cancelled_openoctopus_task_is_a_failure(routes: dict[str, Route]) -> None:
    fake = FakeOpenOctopus(states=("queued", "cancelled"), error=("cancelled by operator", None))
    failure = failure_of(fake, make_request(), routes["openoctopus"])
    assert failure.kind is Kind.UPSTREAM_BROKEN and "cancelled by operator" in failure.message


@pytest.mark.parametrize(("host", "code", "message", "kind"), [
    ("apipass", 402, "Credits insufficient", Kind.AUTH),
    ("apipass", 401, "Unauthorized: invalid key", Kind.AUTH),
    ("apipass", 422, "aspect_ratio is not supported", Kind.BAD_REQUEST),
    ("apipass", 429, "Too many requests", Kind.RATE_LIMITED),
    ("apipass", 455, "Service under maintenance", Kind.OVERLOADED),
    ("apipass", 500, "Server error, retry later", Kind.UPSTREAM_BROKEN),
    ("newportai", 401, "invalid api key", Kind.AUTH),
    ("newportai", 2001, "task submit failed", Kind.UPSTREAM_BROKEN),
])
def test_an_envelope_code_refusing_inside_http_200_is_classified(
        routes: dict[str, Route], host: str, code: int, message: str, kind: Kind) -> None:
    fake = FAKES[host]()
    fake.submit_reply = fake.envelope_error(code, message)
    failure = failure_of(fake, make_request(), routes[host])
    assert failure.kind is kind and message in failure.message and f"code {code}" in failure.message
    assert failure.status == 200 and fake.kinds() == ["submit"]


@pytest.mark.parametrize("host", ENVELOPED)
def test_an_envelope_error_on_a_poll_ends_the_task(routes: dict[str, Route], host: str) -> None:
    fake = FAKES[host]()
    fake.poll_replies = [fake.envelope_error(404, "task not found")]
    failure = failure_of(fake, make_request(), routes[host])
    assert failure.kind is Kind.UPSTREAM_BROKEN and "task not found" in failure.message
    assert fake.kinds() == ["submit", "poll"]


HTTP_ERRORS = [
    (400, "prompt is required", {}, Kind.BAD_REQUEST, None),
    (400, "Request blocked by our safety system", {}, Kind.CONTENT_BLOCKED, None),
    (401, "Invalid API key", {}, Kind.AUTH, None),
    (402, "Insufficient balance", {}, Kind.AUTH, None),
    (429, "Too many requests", {"retry-after": "7"}, Kind.RATE_LIMITED, 7.0),
    (500, "Internal server error", {}, Kind.UPSTREAM_BROKEN, None),
    (503, "Service unavailable", {"retry-after": "4"}, Kind.OVERLOADED, 4.0),
    (503, "Safety checker unavailable", {}, Kind.OVERLOADED, None),
    (504, "Gateway timeout", {}, Kind.TIMEOUT, None),
]


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(("status", "message", "headers", "kind", "after"), HTTP_ERRORS)
def test_submit_http_errors_map_to_every_failure_class(
        routes: dict[str, Route], host: str, status: int, message: str,
        headers: dict[str, str], kind: Kind, after: float | None) -> None:
    fake = FAKES[host]()
    fake.submit_reply = fake.http_error(status, message, headers)
    failure = failure_of(fake, make_request(), routes[host])
    assert (failure.kind, failure.status, failure.retry_after_s) == (kind, status, after)
    assert message in failure.message
    assert fake.kinds() == ["submit"]  # a submit is never re-sent


@pytest.mark.parametrize("host", HOSTS)
def test_the_hosts_own_validation_error_is_bad_request(routes: dict[str, Route],
                                                       host: str) -> None:
    route = with_options(routes[host], resolutions={"2K": "2k"})
    if host == "openoctopus":  # it takes pixels, not tiers: give it an unreadable size
        route = with_options(routes[host], body={"model": "{model}", "prompt": "{prompt}",
                                                 "size": "{resolution}"})
    failure = failure_of(FAKES[host](), make_request(), route)
    assert failure.kind is Kind.BAD_REQUEST
    assert "resolution" in failure.message or "size" in failure.message


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("echoed", [False, True])
def test_a_refused_key_is_auth_and_never_echoed(routes: dict[str, Route], host: str,
                                                echoed: bool) -> None:
    fake = FAKES[host](token="test-key" if echoed else "another-key")
    if echoed:
        fake.submit_reply = fake.http_error(401, "Invalid API key: test-key")
    failure = failure_of(fake, make_request(), routes[host])
    assert failure.kind is Kind.AUTH and "Invalid API key" in failure.message
    assert "test-key" not in failure.message
    assert ("[key]" in failure.message) is echoed


def test_no_key_is_auth_without_a_call(routes: dict[str, Route]) -> None:
    route = routes["toapis"]
    route = replace(route, provider=replace(route.provider, key=None))
    fake = FakeToapis()
    assert failure_of(fake, make_request(), route).kind is Kind.AUTH
    assert fake.seen == []


@pytest.mark.parametrize("host", HOSTS)
def test_max_wait_ends_the_task_as_timeout(routes: dict[str, Route], host: str) -> None:
    fake = FAKES[host](states=(FAKES[host].STATES[0],))
    started = time.monotonic()
    failure = failure_of(fake, make_request(), with_options(routes[host], max_wait_s=0.1))
    assert failure.kind is Kind.TIMEOUT and "0.1 s" in failure.message
    assert time.monotonic() - started < 2
    assert set(fake.kinds()[1:]) == {"poll"}


@pytest.mark.parametrize("host", HOSTS)
def test_the_request_deadline_ends_the_task_as_timeout(routes: dict[str, Route],
                                                       host: str) -> None:
    fake = FAKES[host](states=(FAKES[host].STATES[0],))
    failure = failure_of(fake, make_request(), routes[host], within_s=0.2)
    assert failure.kind is Kind.TIMEOUT and "deadline" in failure.message


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("files_host", ["evil.example.com", "files.toapis.com.evil.example"])
def test_a_result_on_a_host_not_allowed_is_refused_before_any_request_goes_there(
        routes: dict[str, Route], host: str, files_host: str) -> None:
    fake = FAKES[host](files_host=files_host)
    failure = failure_of(fake, make_request(), routes[host])
    assert failure.kind is Kind.UPSTREAM_BROKEN and "not allowed" in failure.message
    assert "fetch" not in fake.kinds()


@pytest.mark.parametrize("host", HOSTS)
def test_transient_poll_errors_are_retried(routes: dict[str, Route], host: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "TRANSIENT_RETRY_S", 0.01)
    fake = FAKES[host]()
    fake.poll_replies = [fake.http_error(503, "Service unavailable"),
                         fake.http_error(429, "Too many requests")]
    assert len(run(fake, make_request(), routes[host]).images) == 1
    assert fake.kinds() == ["submit"] + ["poll"] * 4 + ["fetch"]


@pytest.mark.parametrize("host", HOSTS)
def test_an_expired_result_file_is_upstream_broken(routes: dict[str, Route], host: str) -> None:
    failure = failure_of(FAKES[host](fetch_status=403), make_request(), routes[host])
    assert failure.kind is Kind.UPSTREAM_BROKEN and "HTTP 403" in failure.message


@pytest.mark.parametrize(("host", "reply", "words"), [
    ("toapis", (200, {"object": "generation.task", "status": "queued"}, {}), "no task id"),
    ("toapis", (200, ["task_img_1"], {}), "malformed"),
    ("newportai", (200, {"code": 0, "message": "success", "data": None}, {}), "no task id"),
])
def test_a_submit_reply_without_a_task_is_upstream_broken(
        routes: dict[str, Route], host: str, reply: Any, words: str) -> None:
    failure = failure_of(FAKES[host](submit_reply=reply), make_request(), routes[host])
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


@pytest.mark.parametrize(("host", "reply", "words"), [
    ("toapis", (200, {"id": "x", "status": "paused"}, {}), "'paused' is not in options.states"),
    ("openoctopus", (200, {"id": "x"}, {}), "no task state at options.state_path"),
    ("toapis", (200, {"id": "x", "status": "completed"}, {}), "without a result"),
    ("apipass", (200, {"code": 200, "data": {"state": "success", "resultJson": "{not json"}}, {}),
     "without a result at options.result_paths"),
])
def test_a_poll_reply_that_cannot_be_read_is_upstream_broken(
        routes: dict[str, Route], host: str, reply: Any, words: str) -> None:
    failure = failure_of(FAKES[host](poll_replies=[reply]), make_request(), routes[host])
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


# --- Generic features no one of the four hosts uses ------------------------------------------

GENERIC = {
    "submit_path": "/jobs", "body": {"prompt": "{prompt}", "ratio": "{aspect_ratio}"},
    "task_id_path": "job.id", "poll_url_path": "job.links.status", "state_path": "job.state",
    "states": {"pending": ["running"], "succeeded": ["done"], "failed": ["error"]},
    "result_paths": ["job.outputs[*].b64", "job.outputs[*].uri"],
    "auth_header": "x-api-key", "auth_scheme": "", "poll_interval_s": 0.01,
}


def generic_route(routes: dict[str, Route], **options: Any) -> Route:
    base = routes["toapis"]
    provider = replace(base.provider, name="generic", base_url="https://api.generic.example",
                       allowed_hosts=("status.generic.example",), options={})
    return replace(base, provider=provider, options={**GENERIC, **options})


def generic_host(outputs: list[dict[str, str]], status_host: str) -> tuple[httpx.MockTransport,
                                                                         list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/jobs":
            link = f"https://{status_host}/jobs/j1"
            return httpx.Response(201, json={"job": {"id": "j1", "state": "running",
                                                     "links": {"status": link}}})
        return httpx.Response(200, json={"job": {"id": "j1", "state": "done",
                                                 "outputs": outputs}})
    return httpx.MockTransport(answer), seen


def test_a_status_url_from_the_reply_custom_auth_and_base64_results(
        routes: dict[str, Route]) -> None:
    png = imaging.encode(64, 48, "png", "generic")
    b64 = base64.b64encode(png).decode()
    fake, seen = generic_host([{"b64": b64}], "status.generic.example")
    result = run(fake, make_request(), generic_route(routes))
    submit, poll = seen
    assert submit.headers["x-api-key"] == "test-key" and "authorization" not in submit.headers
    assert orjson.loads(submit.content) == {"prompt": PROMPT, "ratio": "16:9"}
    assert str(poll.url) == "https://status.generic.example/jobs/j1"
    assert "x-api-key" not in poll.headers  # another host: no key
    assert result.images[0].b64 == b64 and result.images[0].mime == "image/png"
    assert result.upstream_id == "j1"


def test_data_uri_results_pass_through(routes: dict[str, Route]) -> None:
    jpeg = base64.b64encode(imaging.encode(32, 32, "jpeg", "x")).decode()
    fake, _ = generic_host([{"uri": f"data:image/jpeg;base64,{jpeg}"}], "api.generic.example")
    (image,) = run(fake, make_request(), generic_route(routes)).images
    assert (image.mime, image.b64) == ("image/jpeg", jpeg)


@pytest.mark.parametrize(("outputs", "status_host", "words"), [
    ([{"b64": base64.b64encode(b"not an image at all, just text").decode()}],
     "api.generic.example", "neither a URL nor a base64 image"),
    ([{"b64": "x"}], "evil.example.com", "not allowed"),
])
def test_generic_results_that_cannot_be_used(routes: dict[str, Route], outputs: Any,
                                             status_host: str, words: str) -> None:
    fake, _ = generic_host(outputs, status_host)
    failure = failure_of(fake, make_request(), generic_route(routes))
    assert failure.kind is Kind.UPSTREAM_BROKEN and words in failure.message


def test_a_bad_config_fails_at_first_use_naming_the_option(routes: dict[str, Route]) -> None:
    options = {k: v for k, v in GENERIC.items() if k != "state_path"}
    route = replace(generic_route(routes), options={**options, "states": {"done": ["x"]}})
    fake, seen = generic_host([], "api.generic.example")
    failure = failure_of(fake, make_request(), route)
    assert failure.kind is Kind.UPSTREAM_BROKEN and "misconfigured" in failure.message
    assert "options.state_path: required" in failure.message
    assert "options.states.done: unknown state" in failure.message
    assert seen == []


# --- Templates, validation, JSON paths -------------------------------------------------------

@pytest.mark.parametrize(("template", "expected"), [
    ({"n": "{n}", "urls": "{images}"}, {"n": 2, "urls": ["u1", "u2"]}),
    ({"model": "openoctopus/{model}", "seed": "{seed}"}, {"model": "openoctopus/m"}),
    ({"hook": "{callback_url}?id={model}"}, {}),
    ({"input": {"p": "{model}", "k": 3, "flag": True}, "list": ["{model}", "{seed}"]},
     {"input": {"p": "m", "k": 3, "flag": True}, "list": ["m"]}),
    ("size {n}x{n}", "size 2x2"),
])
def test_render_fills_typed_values_and_leaves_absent_ones_out(template: Any,
                                                              expected: Any) -> None:
    values = {"n": 2, "images": ["u1", "u2"], "model": "m", "seed": None, "callback_url": None}
    assert render(template, values) == expected


@pytest.mark.parametrize("host", HOSTS)
def test_the_four_configurations_validate(routes: dict[str, Route], host: str) -> None:
    route = routes[host]
    assert validate({**route.provider.options, **route.options}) == []


BASE = dict(GENERIC, poll_path="/jobs/{id}")


@pytest.mark.parametrize(("changes", "problem"), [
    ({"task_id_path": None}, "options.task_id_path: required"),
    ({"result_paths": None}, "options.result_paths: required"),
    ({"poll_url_path": None, "poll_path": None}, "options.poll_path: required"),
    ({"states": {"pending": ["a"], "succeeded": ["b"], "failed": ["c"], "done": ["d"]}},
     "options.states.done: unknown state"),
    ({"states": {"succeeded": ["b"]}}, "options.states.failed: required"),
    ({"states": {"succeeded": ["b", 4], "failed": ["4"]}}, "options.states.failed: '4' is also "
                                                           "succeeded"),
    ({"states": {"succeeded": "done", "failed": ["x"]}},
     "options.states.succeeded: must be a list"),
    ({"state_path": "data..state"}, "options.state_path: 'data..state': cannot read segment"),
    ({"result_paths": []}, "options.result_paths: an empty list of paths"),
    ({"body": {"prompt": "{promt}"}}, "options.body: unknown placeholder {promt}"),
    ({"body": "prompt"}, "options.body: must be a table"),
    ({"poll_path": "jobs/{id}"}, "options.poll_path: must be a path starting with /"),
    ({"submit_path": "/models/{id}"}, "options.submit_path: unknown placeholder {id}"),
    ({"poll_body": {"taskId": "{id}"}}, "options.poll_body: needs poll_method = \"POST\""),
    ({"poll_method": "PATCH"}, "options.poll_method: must be one of GET, POST"),
    ({"poll_interval_s": 0}, "options.poll_interval_s: must be a positive number"),
    ({"poll_backoff": 0.5}, "options.poll_backoff: must be at least 1"),
    ({"error_kinds": {"455": "maintenance"}}, "options.error_kinds.455: unknown failure kind"),
    ({"code_path": "code"}, "options.ok_codes: required with options.code_path"),
    ({"inline_images": "yes"}, "options.inline_images: must be true or false"),
    ({"resolutions": {"1K": 1}}, "options.resolutions: must be a table of strings"),
    ({"state_pth": "x"}, "options.state_pth: unknown option"),
])
def test_validate_names_the_option_at_fault(changes: dict[str, Any], problem: str) -> None:
    options = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    problems = validate(options)
    assert any(p.startswith(problem) for p in problems), problems
    assert validate(BASE) == []


DOCUMENT = {
    "id": "t1", "count": 0, "none": None,
    "data": {"task": {"status": 4}, "images": [{"imageUrl": "u1"}, {"imageUrl": "u2"}, {}],
             "resultJson": orjson.dumps({"resultUrls": ["r1", "r2"]}).decode(),
             "nested": [[1, 2], [3]], "broken": "{not json"},
}


@pytest.mark.parametrize(("path", "found"), [
    ("id", ["t1"]), ("count", [0]), ("none", []), ("missing", []),
    ("data.task.status", [4]), ("data.task.status.deeper", []),
    ("data.images[0].imageUrl", ["u1"]), ("data.images[-2].imageUrl", ["u2"]),
    ("data.images[9].imageUrl", []), ("data.images[*].imageUrl", ["u1", "u2"]),
    ("data.images[*]", [{"imageUrl": "u1"}, {"imageUrl": "u2"}, {}]),
    ("data.nested[*][*]", [1, 2, 3]), ("data.nested[0][1]", [2]),
    ("data.resultJson|json.resultUrls[*]", ["r1", "r2"]),
    ("data.resultJson|json.resultUrls[1]", ["r2"]), ("data.broken|json.x", []),
    ("data.task|json", []), ("id[0]", []), ("data[*]", []),
])
def test_json_paths_find_values(path: str, found: list[Any]) -> None:
    assert jsonpath.compile_path(path).find(DOCUMENT) == found


def test_json_paths_into_a_list_root_and_json_text_root() -> None:
    assert jsonpath.compile_path("[1].url").find([{"url": "a"}, {"url": "b"}]) == ["b"]
    assert jsonpath.compile_path("|json.a").find('{"a": 1}') == [1]


def test_alternatives_the_first_that_finds_wins() -> None:
    paths = jsonpath.compile_paths(["error.message", "error_message", "msg"])
    assert jsonpath.first(paths, {"error_message": "e", "msg": "m"}) == "e"
    assert jsonpath.find(paths, {"msg": "m"}) == ["m"]
    assert jsonpath.first(paths, {}) is None
    assert jsonpath.compile_paths("a.b") == (jsonpath.compile_path("a.b"),)


@pytest.mark.parametrize("path", ["", "a..b", "a.", ".a", "a[", "a[x]", "a]", "a[*", "a|js",
                                  "a|json|json", "a[1]b", "a[1.5]"])
def test_json_path_syntax_errors(path: str) -> None:
    with pytest.raises(PathError):
        jsonpath.compile_path(path)


# --- End to end: openai SDK -> Switchyard -> each fake host ---------------------------------

Start = Callable[[str, FakeTaskHost], openai.OpenAI]


@pytest.fixture
def switchyard(tmp_path: Path) -> Iterator[Start]:
    """start(host, fake) -> an SDK client on a real Switchyard whose only route is that host."""
    with contextlib.ExitStack() as stack:
        def start(host: str, fake: FakeTaskHost) -> openai.OpenAI:
            return kit.sdk_on(stack, tmp_path / host / "data", shipped((host,)), {host: fake})
        yield start


COSTS = {"toapis": "0.130000",  # two 1K images at the sheet's $0.065
         "openoctopus": "0.200000", "newportai": "0.210000",
         "apipass": "0.091000"}


@pytest.mark.parametrize("host", HOSTS)
def test_e2e_generate_through_the_sdk(switchyard: Start, validate: Callable[[str, Any], None],
                                      host: str) -> None:
    fake = FAKES[host]()
    raw = switchyard(host, fake).images.with_raw_response.generate(
        model="nano-banana-2", prompt="a red fox", n=2, size="1536x1024")
    validate("ImagesResponse", raw.http_response.json())
    assert raw.headers["x-switchyard-provider"] == host
    assert raw.headers["x-switchyard-cost-usd"] == COSTS[host]
    assert fake.kinds().count("submit") == 2 and len(fake.tasks) == 2
    data = raw.parse().data or []
    assert len(data) == 2
    for item in data:
        image = decoded(item.b64_json or "")
        # OpenOctopus takes the exact size asked; the others a ratio and a tier.
        size = (1536, 1024) if host == "openoctopus" else geometry.pixels("3:2", "1K")
        assert image.format == "PNG" and image.size == size


@pytest.mark.parametrize("host", HOSTS)
def test_e2e_a_refusal_inside_http_200_is_an_openai_moderation_error(
        switchyard: Start, validate: Callable[[str, Any], None], host: str) -> None:
    fake = FAKES[host](error=("Prompt flagged by the content policy", FAILED_CODES[host]))
    fake.states = (fake.STATES[0], fake.FAILED)
    with pytest.raises(openai.BadRequestError) as caught:
        switchyard(host, fake).images.generate(model="nano-banana-2", prompt="something unsafe")
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "moderation_blocked"
    assert "flagged by the content policy" in body["error"]["message"]


def test_e2e_a_rate_limited_host_is_a_429_with_its_retry_after(
        switchyard: Start, validate: Callable[[str, Any], None]) -> None:
    fake = FakeApiPass()
    fake.submit_reply = fake.http_error(429, "Too many requests", {"retry-after": "7"})
    with pytest.raises(openai.RateLimitError) as caught:
        switchyard("apipass", fake).images.generate(model="nano-banana-2", prompt="a red fox")
    validate("ErrorResponse", caught.value.response.json())
    assert caught.value.response.headers.get("retry-after") == "7"
