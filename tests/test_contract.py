"""The adapter contract, once for every protocol: recorded replies in, one kind of outcome out.

Each adapter's flow is played by hand against the recordings in tests/fixtures/contract/ (no
network, no event loop). Its first call must be a well-formed request that carries the key where
the host wants it; the success recording must give real images, with one paid submit and the key
sent to the provider's own host only; every recorded error must map to exactly its failure class
(and retry hint) and never show the key.
"""

from __future__ import annotations

import base64
import io
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from PIL import Image as PILImage

from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import ADAPTERS
from proxy.providers.base import Sleep, UpstreamCall, UpstreamReply
from proxy.providers.flows import host_allowed
from tests.fixtures.contract import (
    byteplus,
    fal,
    gemini,
    gemini_batch,
    kie,
    openai_images,
    replicate,
    segmind,
    task,
    together,
    vertex,
    wavespeed,
)
from tests.fixtures.contract.recorded import (
    HEIGHT,
    REFERENCE_PNG,
    WIDTH,
    Contract,
    ErrorCase,
    Exchange,
)

CONTRACTS: dict[str, Contract] = {fixture.CONTRACT.protocol: fixture.CONTRACT for fixture in (
    gemini, vertex, openai_images, replicate, fal, together, byteplus, task, segmind,
    wavespeed, kie, gemini_batch)}
PROTOCOLS = sorted(CONTRACTS)
# What flows.drive reads as a reply the flow tripped over: the upstream's breakage, not ours.
MALFORMED = (KeyError, TypeError, ValueError, IndexError, orjson.JSONDecodeError)
# Every table must show how each class of failure a client or router acts on arrives.
REQUIRED_KINDS = frozenset({Kind.AUTH, Kind.RATE_LIMITED, Kind.OVERLOADED, Kind.BAD_REQUEST,
                            Kind.CONTENT_BLOCKED, Kind.UPSTREAM_BROKEN})


# --- The driver: flows.drive without the network -------------------------------------------


def play(contract: Contract, exchanges: Iterable[Exchange],
         calls: list[UpstreamCall] | None = None) -> ImageResult:
    """Run the adapter's flow against a recording as flows.drive runs it against upstreams:
    sleeps are skipped, a provider-given URL must pass the host allow-list, a reply the flow
    trips over is UPSTREAM_BROKEN, and so is a result without images. Each call must be the
    next recorded one, and the recording must be used up. `calls` collects what was sent."""
    script = deque(exchanges)
    sent = calls if calls is not None else []
    try:
        result = _run(contract, script, sent)
    except UpstreamError:
        assert not script, f"the flow failed before using {len(script)} recorded exchange(s)"
        raise
    assert not script, f"the flow finished before using {len(script)} recorded exchange(s)"
    if not result.images:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream returned no image"))
    return result


def _run(contract: Contract, script: deque[Exchange], sent: list[UpstreamCall]) -> ImageResult:
    flow = ADAPTERS[contract.protocol].flow(contract.request, contract.route)
    reply: UpstreamReply | None = None
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as done:
            result: ImageResult = done.value
            return result
        except MALFORMED:
            raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply was malformed",
                                        status=reply.status if reply else None)) from None
        if isinstance(step, Sleep):
            reply = None
            continue
        sent.append(step)
        reply = _answer(step, script, contract)


def _answer(call: UpstreamCall, script: deque[Exchange], contract: Contract) -> UpstreamReply:
    if call.kind != "submit" and not host_allowed(call.url, contract.route.provider):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN,
                                    "upstream pointed to a host it is not allowed to use"))
    assert script, f"the flow made a call that was not recorded: {call.method} {call.url}"
    recorded = script.popleft()
    assert (call.method, call.url) == (recorded.method, recorded.url)
    # The real driver retries these on polls and fetches: a flow never sees them there.
    assert call.kind == "submit" or not (recorded.status >= 500 or recorded.status == 429), \
        "a recording cannot hand a poll or fetch a reply the driver would retry"
    return recorded.reply()


def failure_of(contract: Contract, case: ErrorCase) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        play(contract, case.exchanges)
    return caught.value


def decode(b64: str) -> PILImage.Image:
    """The image the base64 text holds: whole (verify checks every chunk) and decodable."""
    data = base64.b64decode(b64, validate=True)
    PILImage.open(io.BytesIO(data)).verify()
    image = PILImage.open(io.BytesIO(data))
    image.load()
    return image


def body_text(call: UpstreamCall) -> str:
    """The call's body fields as text: the JSON, or the multipart form fields."""
    return orjson.dumps(call.json if call.json is not None else dict(call.form or {})).decode()


# --- The registry and the fixtures -----------------------------------------------------------


def test_every_registered_adapter_has_a_contract() -> None:
    assert set(CONTRACTS) == set(ADAPTERS) - {"simulated"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_error_table_covers_every_failure_class(protocol: str) -> None:
    errors = CONTRACTS[protocol].errors
    assert {case.kind for case in errors} >= REQUIRED_KINDS
    assert len({case.name for case in errors}) == len(errors), "case names must be unique"
    # A body that cannot be read is there too, not only error statuses.
    assert any(case.kind is Kind.UPSTREAM_BROKEN and case.exchanges[-1].status == 200
               for case in errors)


# --- The first call --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["generate", "edit"])
def test_first_call_is_a_well_formed_request(protocol: str, kind: str) -> None:
    contract = CONTRACTS[protocol]
    request: ImageRequest = contract.request if kind == "generate" else contract.edit
    flow = ADAPTERS[protocol].flow(request, contract.route)
    call = flow.send(None)
    flow.close()
    assert isinstance(call, UpstreamCall)
    assert (call.method, call.kind) == ("POST", "submit")
    url = urlsplit(call.url)
    assert url.scheme == "https"
    assert url.hostname == urlsplit(contract.route.provider.base_url).hostname
    header, value = contract.auth
    assert httpx.Headers(dict(call.headers)).get(header) == value
    assert contract.key in value
    # A JSON body or a multipart form, never both, and never the key.
    assert isinstance(call.json, dict) != bool(call.form or call.files)
    assert call.content is None
    text = body_text(call)
    assert contract.key not in text and contract.key not in call.url
    assert request.prompt in text
    model = contract.route.upstream_model
    if contract.model_in == "body":
        assert (call.json or call.form or {})["model"] == model
    else:
        assert f"/{model}" in url.path
    if request.images:
        carried = base64.b64encode(REFERENCE_PNG).decode() in text \
            or any(data == REFERENCE_PNG for _, (_, data, _) in call.files)
        assert carried, "the reference image must travel with the call"


# --- Success ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_success_recording_gives_real_images(protocol: str) -> None:
    contract = CONTRACTS[protocol]
    result = play(contract, contract.success)
    assert len(result.images) == contract.request.n
    for image in result.images:
        decoded = decode(image.b64)
        assert decoded.size == (WIDTH, HEIGHT)
        assert image.mime == PILImage.MIME[str(decoded.format)]
    assert result.size in (None, f"{WIDTH}x{HEIGHT}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_submit_then_only_repeatable_calls(protocol: str) -> None:
    """Money-safe: the paid call goes once, first; what follows is safe to repeat."""
    contract = CONTRACTS[protocol]
    calls: list[UpstreamCall] = []
    play(contract, contract.success, calls)
    assert [call.kind for call in calls][:1] == ["submit"]
    assert all(call.kind in ("poll", "fetch") and call.method == "GET" for call in calls[1:])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_key_goes_to_the_provider_host_only(protocol: str) -> None:
    contract = CONTRACTS[protocol]
    calls: list[UpstreamCall] = []
    play(contract, contract.success, calls)
    own = urlsplit(contract.route.provider.base_url).hostname
    header, value = contract.auth
    for call in calls:
        headers = httpx.Headers(dict(call.headers))
        assert contract.key not in call.url
        if urlsplit(call.url).hostname == own:
            assert headers.get(header) == value, f"{call.method} {call.url} lacks the key"
        else:
            assert all(contract.key not in v for v in headers.values()), \
                f"the key went to {call.url}"


# --- Errors ----------------------------------------------------------------------------------


# (protocol, case) for every recorded error.
ERROR_CASES = [pytest.param(protocol, case, id=f"{protocol}-{case.name}")
               for protocol in PROTOCOLS for case in CONTRACTS[protocol].errors]


@pytest.mark.parametrize(("protocol", "case"), ERROR_CASES)
def test_recorded_error_maps_to_its_class(protocol: str, case: ErrorCase) -> None:
    failure = failure_of(CONTRACTS[protocol], case).failure
    assert (failure.kind, failure.retry_after_s) == (case.kind, case.retry_after_s), \
        failure.message


@pytest.mark.parametrize(("protocol", "case"), ERROR_CASES)
def test_the_key_never_reaches_a_failure_message(protocol: str, case: ErrorCase) -> None:
    contract = CONTRACTS[protocol]
    error = failure_of(contract, case)
    assert contract.key not in error.failure.message
    assert contract.key not in str(error)
