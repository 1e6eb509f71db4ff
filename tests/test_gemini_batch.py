"""The `gemini_batch` protocol against a fake Gemini Batch API: the exact batch it submits, polls
and reads back by key, every way a batch or one of its requests ends, resuming a ticket's batch
without a second submit, the shipped half-price routes, and end to end through the openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy import catalog as catalog_module
from proxy import geometry
from proxy.catalog import Route
from proxy.config import default_routes_dir
from proxy.domain import Geometry, InputImage, Usage
from proxy.failures import Kind
from proxy.providers import ADAPTERS, check_routes, flows, gemini
from proxy.providers.base import Sleep, UpstreamCall
from proxy.providers.gemini_batch import ADAPTER, flow, validate
from tests import protocol_kit as kit
from tests.fakes.gemini import FakeGemini
from tests.fakes.gemini import attempt as sync_attempt
from tests.fakes.gemini import failure as sync_failure
from tests.fakes.gemini import make_route as sync_route
from tests.fakes.gemini_batch import GEMINI_BASE, GEMINI_HOST, FakeGeminiBatch
from tests.protocol_kit import decoded, edit_request, make_request, reply

MODEL = "gemini-3.1-flash-image"
CREATE = f"{GEMINI_BASE}/models/{MODEL}:batchGenerateContent"
LIST = f"{GEMINI_BASE}/batches?pageSize=100"
BATCH = kit.Upstream("gemini_batch", GEMINI_BASE, "GEMINI_API_KEY", (), MODEL, "0.0336",
                     tiers=("0.5K", "1K", "2K", "4K"))
FAST = {"poll_s": 0.01}


def make_route(options: dict[str, Any] | None = None, key: str | None = "test-key") -> Route:
    return BATCH.route({**FAST, **(options or {})}, key)


run = partial(kit.run, ADAPTER)
failure_of = partial(kit.failure_of, ADAPTER)


def inline(key: str) -> list[dict[str, Any]]:
    """The inline requests of a batch an earlier attempt created for this key."""
    return [{"request": gemini.body(make_request(), make_route()), "metadata": {"key": key}}]


def calls(fake: FakeGeminiBatch) -> list[tuple[str, str]]:
    return [(seen.method, str(seen.url)) for seen in fake.seen]


# --- Submit, poll, read back ------------------------------------------------------------------


def test_one_image_is_one_batch_of_one_request_polled_to_success_and_matched_by_key() -> None:
    fake = FakeGeminiBatch()
    request, route = make_request(seed=7), make_route()
    result = run(fake, request, route)
    batch = fake.only
    assert calls(fake) == [("POST", CREATE)] + [("GET", f"{GEMINI_BASE}/{batch.name}")] * 2
    assert batch.answered == ["RUNNING", "SUCCEEDED"]
    submit = fake.seen[0]
    assert submit.headers["x-goog-api-key"] == "test-key"
    assert submit.headers["content-type"] == "application/json"
    (item,) = submit.json["batch"]["inputConfig"]["requests"]["requests"]
    assert item["request"] == gemini.body(request, route)  # the sync protocol's own body
    key = item["metadata"]["key"]
    assert key and submit.json["batch"]["displayName"] == f"switchyard-{key}"
    assert set(submit.json["batch"]) == {"displayName", "inputConfig"}
    assert all(s.headers["x-goog-api-key"] == "test-key" for s in fake.seen)
    (image,) = result.images
    assert (decoded(image).format, decoded(image).size) == ("PNG", geometry.pixels("16:9", "2K"))
    assert result.upstream_id == batch.name
    assert result.usage is not None and result.usage.output_image_tokens == 1680


def test_the_ticket_is_the_key_and_names_the_batch() -> None:
    fake = FakeGeminiBatch()
    run(fake, make_request(ticket="job-41"), make_route())
    spec = fake.seen[1].json["batch"]  # after the lookup
    assert spec["displayName"] == "switchyard-job-41"
    assert spec["inputConfig"]["requests"]["requests"][0]["metadata"] == {"key": "job-41"}


def test_polls_wait_poll_s_between_them_and_only_the_create_is_a_submit() -> None:
    steps = flow(make_request(), make_route({"poll_s": 30}))
    create = next(steps)
    assert isinstance(create, UpstreamCall) and create.kind == "submit"
    step = steps.send(reply({"name": "batches/abc", "metadata": {
        "state": "BATCH_STATE_PENDING"}}))
    for state in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_UNSPECIFIED"):
        assert step == Sleep(30.0)
        poll = steps.send(None)
        assert isinstance(poll, UpstreamCall)
        assert (poll.method, poll.url, poll.kind) == ("GET", f"{GEMINI_BASE}/batches/abc",
                                                      "poll")
        step = steps.send(reply({"name": "batches/abc", "metadata": {"state": state}}))
    assert step == Sleep(30.0)
    steps.close()


def test_the_default_poll_interval_is_thirty_seconds() -> None:
    route = BATCH.route({})
    steps = flow(make_request(), route)
    next(steps)
    assert steps.send(reply({"name": "batches/abc", "metadata": {}})) == Sleep(30.0)
    steps.close()


@pytest.mark.parametrize("ended", [
    {"metadata": {"state": "JOB_STATE_SUCCEEDED"}},  # python-genai's spelling
    {"state": "BATCH_STATE_SUCCEEDED"},  # the state at the top level
    {"done": True, "metadata": {}},  # only `done`
])
def test_other_spellings_of_the_end_are_read_too(ended: dict[str, Any]) -> None:
    steps = flow(make_request(ticket="t"), make_route({"resume_lookup": False}))
    next(steps)
    data = base64.b64encode(kit.red_png()).decode()
    output = {"inlinedResponses": {"inlinedResponses": [{"metadata": {"key": "t"}, "response": {
        "candidates": [{"content": {"parts": [{"inlineData": {
            "mimeType": "image/png", "data": data}}]}, "finishReason": "STOP"}]}}]}}
    operation = {"name": "batches/abc", **ended}
    operation.setdefault("metadata", {})["output"] = output
    with pytest.raises(StopIteration) as done:
        steps.send(reply(operation))
    assert done.value.value.images[0].b64 == data


def test_an_edit_carries_its_reference_images_in_the_inline_request() -> None:
    fake = FakeGeminiBatch()
    request = edit_request(InputImage("image/png", data=kit.red_png()))
    run(fake, request, make_route())
    inline = fake.seen[0].json["batch"]["inputConfig"]["requests"]["requests"][0]["request"]
    assert inline == gemini.body(request, make_route())
    assert inline["contents"][0]["parts"][0]["inlineData"]["data"] == \
        base64.b64encode(kit.red_png()).decode()


def test_n_images_are_one_batch_with_a_request_per_image_and_usage_adds_up() -> None:
    fake = FakeGeminiBatch()
    result = run(fake, make_request(n=3, ticket="job-9", geometry=Geometry(
        "1:1", "1K", None, "aspect_ratio")), make_route())
    assert fake.creates == 1
    items = fake.only.requests
    assert [i["metadata"]["key"] for i in items] == ["job-9-1", "job-9-2", "job-9-3"]
    assert len(result.images) == 3
    assert result.usage is not None and result.usage.output_image_tokens == 3 * 1120


def test_a_refused_request_among_several_still_delivers_the_others() -> None:
    fake = FakeGeminiBatch()
    fake.inner.then("ok", "image_safety")
    result = run(fake, make_request(n=2), make_route())
    assert len(result.images) == 1


def test_a_request_gemini_cannot_take_fails_before_any_call() -> None:
    fake = FakeGeminiBatch()
    failure = failure_of(fake, make_request(background="transparent", ticket="t"), make_route())
    assert failure.kind is Kind.BAD_REQUEST and fake.seen == []


def test_no_key_fails_as_auth_before_any_call() -> None:
    fake = FakeGeminiBatch()
    assert failure_of(fake, make_request(), make_route(key=None)).kind is Kind.AUTH
    assert fake.seen == []


# --- How batches and their requests end -------------------------------------------------------


@pytest.mark.parametrize(("states", "kind", "words"), [
    (("PENDING", "FAILED"), Kind.UPSTREAM_BROKEN, "Batch failed: an internal error"),
    (("PENDING", "RUNNING", "EXPIRED"), Kind.TIMEOUT, "expired"),
    (("PENDING", "CANCELLED"), Kind.UPSTREAM_BROKEN, "cancelled"),
])
def test_a_batch_that_ends_badly_maps_to_its_failure_class(states: tuple[str, ...], kind: Kind,
                                                           words: str) -> None:
    fake = FakeGeminiBatch(states=states)
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is kind and words in failure.message


def test_a_failed_batch_with_an_argument_error_is_the_clients_bad_request() -> None:
    fake = FakeGeminiBatch(states=("PENDING", "FAILED"),
                           failed_error={"code": 3, "message": "Request contains an invalid "
                                                               "argument."})
    failure = failure_of(fake, make_request(), make_route())
    assert failure.kind is Kind.BAD_REQUEST
    assert failure.message == "Gemini batch failed: Request contains an invalid argument."


# Each inner outcome classifies exactly as the synchronous gemini protocol classifies it.
@pytest.mark.parametrize("scenario", ["image_safety", "prohibited", "prompt_blocked",
                                      "text_only", "no_image", "other", "internal",
                                      "overloaded", "deadline", "precondition", "rate_limited",
                                      "daily_quota"])
def test_a_request_inside_a_batch_fails_as_the_sync_protocol_fails(scenario: str) -> None:
    fake = FakeGeminiBatch()
    fake.inner.then(scenario)
    batch = failure_of(fake, make_request(), make_route())
    sync = sync_failure(gemini.ADAPTER, make_request(), sync_route(), FakeGemini().then(scenario))
    assert (batch.kind, batch.retry_after_s) == (sync.kind, sync.retry_after_s)
    if batch.kind is Kind.CONTENT_BLOCKED:
        assert batch.message == sync.message


def test_an_item_error_is_a_status_with_a_grpc_code() -> None:
    fake = FakeGeminiBatch()
    fake.inner.then("internal")
    run_failure = failure_of(fake, make_request(), make_route())
    (item,) = fake.only.output or []
    assert item["error"]["code"] == 13 and run_failure.kind is Kind.UPSTREAM_BROKEN


def test_a_response_under_no_key_we_sent_is_the_upstreams_breakage() -> None:
    fake = FakeGeminiBatch()
    fake.wrong_keys = True
    failure = failure_of(fake, make_request(ticket="job-secret-ticket"), make_route())
    assert failure.kind is Kind.UPSTREAM_BROKEN
    assert "job-secret-ticket" not in failure.message


@pytest.mark.parametrize(("scenario", "kind", "retry"), [
    ("invalid_argument", Kind.BAD_REQUEST, None),
    ("rate_limited", Kind.RATE_LIMITED, 53.0),
    ("unavailable", Kind.OVERLOADED, None),
])
def test_a_refused_create_is_classified_and_never_sent_again(scenario: str, kind: Kind,
                                                             retry: float | None) -> None:
    fake = FakeGeminiBatch().fail_create(scenario)
    failure = failure_of(fake, make_request(), make_route())
    assert (failure.kind, failure.retry_after_s) == (kind, retry)
    assert fake.creates == 1 and fake.batches == {}


def test_a_wrong_key_is_auth() -> None:
    fake = FakeGeminiBatch(api_key="the-right-key")
    assert failure_of(fake, make_request(), make_route()).kind is Kind.AUTH


def test_a_transient_poll_error_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "TRANSIENT_RETRY_S", 0.01)
    fake = FakeGeminiBatch().fail_polls("unavailable", "internal")
    assert len(run(fake, make_request(), make_route()).images) == 1
    assert fake.creates == 1


def test_a_batch_that_vanished_is_the_upstreams_breakage() -> None:
    fake = FakeGeminiBatch().fail_polls("not_found")
    assert failure_of(fake, make_request(), make_route()).kind is Kind.UPSTREAM_BROKEN


@pytest.mark.parametrize("name", ["operations/abc", "batches/../../v1/files", None,
                                  "https://evil.example/batches/x"])
def test_a_batch_name_that_is_not_one_is_never_followed(name: str | None) -> None:
    fake = FakeGeminiBatch()
    fake.create_reply = {"name": name, "metadata": {"state": "BATCH_STATE_PENDING"}}
    assert failure_of(fake, make_request(), make_route()).kind is Kind.UPSTREAM_BROKEN
    assert len(fake.seen) == 1


def test_past_its_patience_the_flow_cancels_its_batch() -> None:
    fake = FakeGeminiBatch()
    fake.hold = True
    # The router's deadline for a deferred attempt is the request's patience.
    failure = failure_of(fake, make_request(patience_s=1.0), make_route({"poll_s": 0.2}),
                         within_s=1.0)
    assert failure.kind is Kind.TIMEOUT
    assert calls(fake)[-1] == ("POST", f"{GEMINI_BASE}/{fake.only.name}:cancel")
    assert fake.only.state == "CANCELLED"


def test_the_api_key_never_reaches_a_failure_message() -> None:
    key = "AIzaSyBatchKey-0123456789abcdefghij"
    for prepare in (lambda f: f.fail_create("invalid_argument"),
                    lambda f: f.inner.then("precondition"),
                    lambda f: setattr(f, "states", ("PENDING", "FAILED"))):
        fake = FakeGeminiBatch(api_key=key,
                               failed_error={"code": 7, "message": f"key {key} is revoked"})
        prepare(fake)
        failure = failure_of(fake, make_request(ticket="job-1"), make_route(key=key))
        assert key not in failure.message
        assert all(s.url.host == GEMINI_HOST for s in fake.seen)
    wrong = FakeGeminiBatch(api_key="another")
    assert key not in failure_of(wrong, make_request(), make_route(key=key)).message


# --- Resuming a ticket's batch --------------------------------------------------------------


def test_a_ticket_resumes_its_batch_after_a_crash_and_never_submits_twice() -> None:
    fake = FakeGeminiBatch()
    fake.hold = True
    request = make_request(ticket="job-77")
    first = failure_of(fake, request, make_route(), within_s=0.2)  # the worker dies waiting
    assert first.kind is Kind.TIMEOUT
    fake.hold = False
    before = len(fake.seen)
    result = run(fake, request, make_route())
    assert fake.creates == 1 and len(fake.batches) == 1
    assert calls(fake)[before:before + 2] == [("GET", LIST),
                                              ("GET", f"{GEMINI_BASE}/{fake.only.name}")]
    assert len(result.images) == 1


def test_a_ticket_whose_batch_already_succeeded_reads_it_without_waiting() -> None:
    fake = FakeGeminiBatch(states=("SUCCEEDED",))
    request = make_request(ticket="job-5")
    run(fake, request, make_route())
    before = len(fake.seen)
    result = run(fake, request, make_route({"poll_s": 60}))  # a pause would pass the deadline
    assert calls(fake)[before:] == [("GET", LIST), ("GET", f"{GEMINI_BASE}/{fake.only.name}")]
    assert fake.creates == 1 and len(result.images) == 1


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED", "EXPIRED"])
def test_a_batch_that_can_no_longer_deliver_is_not_resumed(state: str) -> None:
    fake = FakeGeminiBatch()
    old = fake.add("switchyard-job-3", state)
    result = run(fake, make_request(ticket="job-3"), make_route())
    assert fake.creates == 1 and len(fake.batches) == 2
    assert result.upstream_id != old.name


def test_the_lookup_follows_next_page_tokens() -> None:
    fake = FakeGeminiBatch(page_size=2)
    mine = fake.add("switchyard-job-8", "RUNNING", "SUCCEEDED", requests=inline("job-8"))
    for i in range(4):
        fake.add(f"someone-else-{i}", "RUNNING")
    result = run(fake, make_request(ticket="job-8"), make_route())
    assert fake.creates == 0 and result.upstream_id == mine.name
    lists = [str(s.url) for s in fake.seen if s.url.path == "/v1beta/batches"]
    assert lists == [LIST, f"{LIST}&pageToken=2", f"{LIST}&pageToken=4"]


def test_the_lookup_stops_after_lookup_pages_and_submits() -> None:
    fake = FakeGeminiBatch(page_size=1)
    fake.add("switchyard-job-2", "RUNNING")
    for i in range(3):
        fake.add(f"someone-else-{i}", "RUNNING")
    run(fake, make_request(ticket="job-2"), make_route({"lookup_pages": 2}))
    assert sum(s.url.path == "/v1beta/batches" for s in fake.seen) == 2
    assert fake.creates == 1


def test_resume_lookup_false_submits_at_once() -> None:
    fake = FakeGeminiBatch()
    fake.add("switchyard-job-4", "RUNNING")
    run(fake, make_request(ticket="job-4"), make_route({"resume_lookup": False}))
    assert fake.seen[0].method == "POST" and fake.creates == 1


def test_without_a_ticket_there_is_nothing_to_look_up() -> None:
    fake = FakeGeminiBatch()
    run(fake, make_request(), make_route())
    assert fake.seen[0].method == "POST"


def test_a_refused_lookup_is_classified() -> None:
    fake = FakeGeminiBatch(api_key="other")
    assert failure_of(fake, make_request(ticket="j"), make_route()).kind is Kind.AUTH
    assert fake.creates == 0


# --- Route data ------------------------------------------------------------------------------


def test_options_are_checked_when_the_catalog_loads() -> None:
    assert validate({"poll_s": 30, "resume_lookup": True, "lookup_pages": 3}) == []
    assert validate({"poll_s": 0, "resume_lookup": "no", "lookup_pages": 0,
                     "max_wait_s": "1h"}) == [
        "options.poll_s: must be a positive number",
        "options.max_wait_s: must be a positive number",
        "options.resume_lookup: must be true or false",
        "options.lookup_pages: must be a whole number of at least 1"]


def shipped() -> dict[str, dict[str, catalog_module.Route]]:
    models = catalog_module.inventory(default_routes_dir(), {}, ADAPTERS)
    return {m.name: {r.provider.name: r for r in m.routes} for m in models}


@pytest.mark.parametrize("model", ["nano-banana", "nano-banana-pro", "nano-banana-2"])
def test_each_nano_banana_has_a_half_price_deferred_batch_route(model: str) -> None:
    routes = shipped()[model]
    google, batch = routes["google"], routes["google-batch"]
    assert batch.provider.protocol == "gemini_batch" and batch.provider.deferred
    assert not google.provider.deferred
    assert batch.provider.key_env == google.provider.key_env == "GEMINI_API_KEY"
    assert batch.upstream_model == google.upstream_model
    assert batch.typical_latency_s == 1800
    assert batch.capabilities.tiers == google.capabilities.tiers
    assert {t: p * 2 for t, p in batch.price_per_image.items()} == google.price_per_image
    assert google.token_rates is not None and batch.token_rates is not None
    assert batch.token_rates.image == google.token_rates.image / 2
    assert batch.token_rates.input == google.token_rates.input / 2
    assert batch.token_rates.text == google.token_rates.text / 2
    assert batch.options.get("image_sizes") == google.options.get("image_sizes")
    assert check_routes([catalog_module.Model(model, (), "google", 0, "cheapest",
                                              (batch,))]) == []


def test_one_key_switches_on_both_google_providers() -> None:
    live = catalog_module.load(default_routes_dir(), {"GEMINI_API_KEY": "k"}, False, ADAPTERS)
    providers = {p.name: p for p in live.providers}
    assert set(providers) == {"google", "google-batch"}
    assert providers["google-batch"].max_in_flight == 10000  # items waiting in batches
    assert providers["google-batch"].deferred
    assert providers["google-batch"].options["poll_s"] == 30


# --- End to end through the openai SDK --------------------------------------------------------

# Not deferred here: the SDK's requests are interactive, and this tests the protocol, not the
# router's choice of who may wait for a batch.
PROVIDERS_TOML = """
[google-batch]
protocol = "gemini_batch"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"
timeout_s = 60
options = { poll_s = 0.01 }
"""

ROUTES_TOML = """
[[routes]]
provider = "google-batch"
upstream_model = "gemini-3.1-flash-image"
typical_latency_s = 1800
price.per_token = { usd_per_million = 30, tokens = { "1K" = 1120, "2K" = 1680 } }
"""


@pytest.fixture
def sdk(tmp_path: Path) -> Iterator[tuple[openai.OpenAI, FakeGeminiBatch]]:
    catalog = kit.write_catalog(tmp_path / "routes", PROVIDERS_TOML,
                                {"nano-banana-2": kit.nano_banana_2(ROUTES_TOML)},
                                {"GEMINI_API_KEY": "test-key"})
    fake = FakeGeminiBatch()
    with kit.switchyard(tmp_path, "google-batch", catalog) as start:
        yield start(fake), fake


def test_sdk_generate_through_a_batch_bills_the_reported_tokens(
        sdk: tuple[openai.OpenAI, FakeGeminiBatch],
        validate: Callable[[str, Any], None]) -> None:
    client, fake = sdk
    raw = client.images.with_raw_response.generate(model="nano-banana-2", prompt="a red fox",
                                                   size="1024x1024", n=2)
    validate("ImagesResponse", raw.http_response.json())
    assert len(raw.parse().data) == 2 and fake.creates == 1
    assert raw.headers["x-switchyard-provider"] == "google-batch"
    # 2 x 1120 image tokens at $30 per million: half the Gemini API's $60.
    assert Decimal(raw.headers["x-switchyard-cost-usd"]) == Decimal("0.0672")


def test_sdk_sees_a_refusal_inside_a_batch_as_moderation_blocked(
        sdk: tuple[openai.OpenAI, FakeGeminiBatch]) -> None:
    client, fake = sdk
    fake.inner.then("image_safety")
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="nano-banana-2", prompt="something it will not draw")
    assert caught.value.response.json()["error"]["code"] == "moderation_blocked"


def test_usage_is_reported_as_the_sync_protocol_reports_it() -> None:
    sync = sync_attempt(gemini.ADAPTER, make_request(), sync_route(), FakeGemini())
    batch = run(FakeGeminiBatch(), make_request(), make_route())
    assert batch.usage == sync.usage and isinstance(batch.usage, Usage)
