"""proxy.failures: Retry-After parsing, HTTP status classes, transport-error mapping, and the
shared rules by which an error text names a class."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

import httpx
import pytest

from proxy.failures import (
    MAX_RETRY_AFTER_S,
    RETRYABLE,
    Failure,
    Kind,
    UpstreamError,
    from_status,
    from_text,
    from_transport,
    mentions,
    refusal,
    retry_after,
)

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def _http_date(seconds_from_now: int) -> str:
    return format_datetime(NOW + dt.timedelta(seconds=seconds_from_now), usegmt=True)


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"retry-after": "120"}, 120.0),
    ({"Retry-After": "0"}, 0.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "-5"}, 0.0),
    ({"retry-after": ""}, None),
    ({"retry-after": _http_date(30)}, 30.0),
    ({"retry-after": "Fri, 01 May 2026 12:01:30 GMT"}, 90.0),
    ({"retry-after": _http_date(-30)}, 0.0),  # a date in the past: retry now
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "-100"}, 0.0),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise header wins
    ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # a garbled one is skipped
    ({"retry-after-ms": "soon"}, None),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "in a minute or two"}, None),
    ({"retry-after": "Fri, 99 Foo 2026 99:99:99 GMT"}, None),
])
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = retry_after(httpx.Headers(headers), now=NOW.timestamp())
    assert got == (None if expected is None else pytest.approx(expected))


def test_retry_after_date_uses_the_clock_by_default() -> None:
    soon = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90), usegmt=True)
    got = retry_after(httpx.Headers({"retry-after": soon}))
    assert got is not None and 80 <= got <= 91


@pytest.mark.parametrize("value", ["inf", "1e12", "Fri, 01 Jan 2999 00:00:00 GMT"])
def test_retry_after_is_capped(value: str) -> None:
    assert retry_after(httpx.Headers({"retry-after": value})) == MAX_RETRY_AFTER_S


def test_retry_after_nan_is_no_hint() -> None:
    assert retry_after(httpx.Headers({"retry-after": "nan"})) is None


@pytest.mark.parametrize(("status", "kind"), [
    (429, Kind.RATE_LIMITED),
    (401, Kind.AUTH),
    (403, Kind.AUTH),
    (408, Kind.TIMEOUT),
    (504, Kind.TIMEOUT),
    (502, Kind.OVERLOADED),
    (503, Kind.OVERLOADED),
    (529, Kind.OVERLOADED),
    (400, Kind.BAD_REQUEST),
    (404, Kind.BAD_REQUEST),
    (409, Kind.BAD_REQUEST),
    (422, Kind.BAD_REQUEST),
    (500, Kind.UPSTREAM_BROKEN),
    (501, Kind.UPSTREAM_BROKEN),
])
def test_from_status(status: int, kind: Kind) -> None:
    failure = from_status(status, httpx.Headers())
    assert failure.kind is kind
    assert failure.status == status
    assert failure.retryable is (kind in RETRYABLE)
    assert failure.message
    assert failure.retry_after_s is None


@pytest.mark.parametrize(("status", "after"), [
    (429, 7.0), (503, 7.0), (504, 7.0), (500, 7.0), (401, None), (400, None),
])
def test_from_status_keeps_retry_after_only_where_it_matters(
        status: int, after: float | None) -> None:
    assert from_status(status, httpx.Headers({"retry-after": "7"})).retry_after_s == after


def test_from_status_500_message_names_the_status() -> None:
    assert "500" in from_status(500, httpx.Headers()).message


@pytest.mark.parametrize(("kind", "retryable"), [
    (Kind.BAD_REQUEST, False),
    (Kind.AUTH, True),  # Switchyard's credential: another route (or key) serves it
    (Kind.CONTENT_BLOCKED, False),
    (Kind.RATE_LIMITED, True),
    (Kind.OVERLOADED, True),
    (Kind.TIMEOUT, True),
    (Kind.UPSTREAM_BROKEN, True),
])
def test_retryable(kind: Kind, retryable: bool) -> None:
    assert Failure(kind, "x").retryable is retryable


MARKERS = ("safety", "nsfw", "content policy", "content_policy")


@pytest.mark.parametrize(("text", "kind"), [
    ("Image blocked by the safety filter", Kind.CONTENT_BLOCKED),
    ("Your prompt was flagged as NSFW", Kind.CONTENT_BLOCKED),
    ("Prompt violates our Content Policy", Kind.CONTENT_BLOCKED),
    ("Request rejected (content_policy_violation)", Kind.CONTENT_BLOCKED),  # a code, as written
    # A marker inside a parameter's name is about the field, not a refusal.
    ("enable_safety_checker must be a boolean", None),
    ("safety_tolerance must be between 1 and 6", None),
    # The host's outage wins over a content word beside it.
    ("Safety checker unavailable, please retry", Kind.OVERLOADED),
    ("Safety service temporarily overloaded", Kind.OVERLOADED),
    ("NSFW filter under maintenance", Kind.OVERLOADED),
    ("Inference failed", None),
    ("", None),
])
def test_from_text_reads_an_outage_before_a_refusal(text: str, kind: Kind | None) -> None:
    assert from_text(text, MARKERS) is kind
    assert refusal(text, MARKERS) is (kind is Kind.CONTENT_BLOCKED)


def test_mentions_ignores_empty_markers_and_case() -> None:
    assert mentions("Refused by HOUSE RULES", ["house rules"])
    assert not mentions("anything at all", ["", "house rules"])


@pytest.mark.parametrize(("secret", "message", "expected"), [
    ("sk-secret-1234", "bad key sk-secret-1234, and again sk-secret-1234",
     "bad key [key], and again [key]"),
    ("sk-secret-1234", "bad key", "bad key"),
    ("abc", "abc is too short to be a key worth cutting", "abc is too short to be a key worth "
                                                         "cutting"),
    # safe_text cut the message short in the middle of the key: its start goes too.
    ("sk-secret-1234", "bad key sk-secr…", "bad key [key]…"),
    ("sk-secret-1234", "bad key sk-…", "bad key sk-…"),  # three characters name nothing
])
def test_without_cuts_a_secret_out_of_the_message(secret: str, message: str,
                                                  expected: str) -> None:
    failure = Failure(Kind.AUTH, message, 2.0, 401)
    cut = failure.without(secret)
    assert cut == Failure(Kind.AUTH, expected, 2.0, 401)
    assert (cut is failure) is (message == expected)


REQUEST = httpx.Request("POST", "https://upstream.example/v1/images")


@pytest.mark.parametrize(("exc", "kind", "word"), [
    (httpx.ConnectError("refused", request=REQUEST), Kind.OVERLOADED, "connect"),
    (httpx.ConnectTimeout("slow", request=REQUEST), Kind.TIMEOUT, "ConnectTimeout"),
    (httpx.ReadTimeout("slow", request=REQUEST), Kind.TIMEOUT, "ReadTimeout"),
    (httpx.PoolTimeout("busy", request=REQUEST), Kind.TIMEOUT, "PoolTimeout"),
    (httpx.RemoteProtocolError("bad frame", request=REQUEST), Kind.UPSTREAM_BROKEN,
     "RemoteProtocolError"),
    (httpx.ReadError("reset", request=REQUEST), Kind.UPSTREAM_BROKEN, "ReadError"),
])
def test_from_transport(exc: httpx.TransportError, kind: Kind, word: str) -> None:
    failure = from_transport(exc)
    assert failure.kind is kind
    assert word in failure.message
    assert failure.retryable is True
    assert failure.status is None
    assert "upstream.example" not in failure.message  # messages never carry URLs


def test_upstream_error_carries_the_failure() -> None:
    failure = Failure(Kind.RATE_LIMITED, "upstream rate limit", 3.0, 429)
    error = UpstreamError(failure)
    assert error.failure is failure
    assert str(error) == "rate_limited: upstream rate limit"


def test_a_key_quoted_in_an_upstream_error_never_leaves_the_flow() -> None:
    """Whatever an adapter puts in a failure message, flows.generate cuts the key out."""
    import asyncio
    import time

    import httpx

    from proxy.catalog import Capabilities, Provider, Route
    from proxy.config import Secret
    from proxy.domain import Geometry, ImageRequest
    from proxy.failures import UpstreamError
    from proxy.providers import flows
    from proxy.providers.base import Adapter, Flow, UpstreamCall

    key = "sk-very-secret-upstream-key"

    def flow(request: ImageRequest, route: Route) -> Flow:
        reply = yield UpstreamCall("POST", f"{route.provider.base_url}/x")
        assert reply is not None
        raise UpstreamError(Failure(Kind.AUTH, f"host said: bad key {key}"))

    route = Route(id="m/p", model="m", provider=Provider("p", "x", "https://p.example",
                                                         key=Secret(key)),
                  upstream_model="u", price_per_image={}, capabilities=Capabilities(("1K",),
                                                                                    ("1:1",)))
    request = ImageRequest("generate", "m", "x", 1, Geometry("1:1", "1K", None, "default"),
                           "png", "b64_json")

    async def go() -> Failure:
        transport = httpx.MockTransport(lambda r: httpx.Response(401))
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                await flows.generate(Adapter("x", flow), route, request, client,
                                     time.monotonic() + 5)
            except UpstreamError as exc:
                return exc.failure
        raise AssertionError("no failure")

    failure = asyncio.run(go())
    assert key not in failure.message and "[key]" in failure.message
