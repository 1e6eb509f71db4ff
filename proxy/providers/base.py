"""The adapter contract: a wire protocol as pure functions and one value.

An adapter knows one protocol and nothing of routing, billing, config or serving. Its `flow`
is a generator in the manner of httpx's auth flows: it yields the calls to make (and pauses to
take), receives each reply, and returns the ImageResult or raises UpstreamError. flows.py is
the only code that performs the I/O, so one async driver serves sync, submit-then-poll and
fetch-the-result protocols alike, and every adapter is testable from recorded replies alone.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from proxy.catalog import Provider, Route
from proxy.domain import ImageRequest, ImageResult, PartialImage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.upstream import fastjson
from proxy.upstream.events import ServerEvent

# submit: may start paid work, so never re-sent; poll and fetch: safe to repeat.
CallKind = Literal["submit", "poll", "fetch", "cancel"]


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One HTTP request to send: the adapter's translation of (part of) an ImageRequest."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    # Multipart uploads: form fields and (field, (filename, bytes, mime)) files.
    form: Mapping[str, str] | None = None
    files: tuple[tuple[str, tuple[str, bytes, str]], ...] = ()
    kind: CallKind = "submit"
    # The reply is the outcome (fal's result fetch): an error status goes to the flow at once
    # instead of being retried as a transient poll error until the deadline.
    final: bool = False
    # A streamed call (text/event-stream): each event is handed to this as it arrives; the
    # partial images it finds are relayed to the client at once and dropped, and the other
    # events make up the reply's body. A reply that is not a stream is read whole as usual.
    partials: Callable[[ServerEvent], PartialImage | None] | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Pause before the next call (poll intervals); the driver caps it at the deadline."""

    seconds: float


_UNPARSED: Any = object()


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """One HTTP response as received; `json()` decodes the body with orjson, once: classify
    and parse both read it, and an image reply is megabytes of JSON."""

    status: int
    headers: httpx.Headers
    body: bytes | bytearray  # a bytearray as the lean transport received it (no copy)
    _parsed: Any = field(default=_UNPARSED, compare=False, repr=False)

    def json(self) -> Any:
        if self._parsed is _UNPARSED:
            object.__setattr__(self, "_parsed", fastjson.loads(self.body) if self.body else None)
        return self._parsed


Step = UpstreamCall | Sleep
Flow = Generator[Step, UpstreamReply | None, ImageResult]
# A flow that ends in something other than images (a group's upstream job, once it ends).
Steps = Generator[Step, UpstreamReply | None, Any]


@dataclass(frozen=True, slots=True)
class Grouping:
    """How a deferred protocol (a batch API) sends many requests as one upstream job and reads
    each one's answer out of it: one submit and one poll loop serve them all.

    `prepare(ticket, request, route)` is one member's part of the job and its size in bytes
    (raising the member's own refusal, so one bad request never sinks the rest);
    `submit(parts, label, route)` sends the job under `label` and returns its name;
    `find(label, request, route)` is the name of the job sent under `label`, or None if the
    upstream has none (its create never arrived); `wait(name, request, route)` polls it until
    it ends (the request gives the patience) and returns the ended job;
    `answer(ended, ticket, request)` is one member's ImageResult, or raises its failure."""

    prepare: Callable[[str, ImageRequest, Route], tuple[Any, int]]
    submit: Callable[[Sequence[Any], str, Route], Steps]
    find: Callable[[str, ImageRequest, Route], Steps]
    wait: Callable[[str, ImageRequest, Route], Steps]
    answer: Callable[[Any, str, ImageRequest], ImageResult]
    max_members: int = 500
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Adapter:
    """A wire protocol: `flow(request, route)` drives one attempt at one route."""

    protocol: str
    flow: Callable[[ImageRequest, Route], Flow]
    # Set only by in-process upstreams (the simulated demo): the transport that answers calls.
    transport: Callable[[Provider, float], httpx.AsyncBaseTransport] | None = None
    # How many images one upstream call can return; n above it runs parallel flows.
    images_per_call: int = 10
    # Whether the protocol hands this route's host a callback URL (route option
    # `callback_url`); None: it never does, and the driver keeps polling.
    takes_callback: Callable[[Route], bool] | None = None
    # Checks a callback's signature: (headers, raw body, secret, now) -> genuine. None: the
    # host does not sign (the unguessable URL and re-fetching the result are the defence).
    verify_callback: Callable[[Mapping[str, str], bytes, str, float], bool] | None = None
    # Checks a route's merged provider+route options at catalog load: one line per problem.
    validate: Callable[[Mapping[str, Any]], list[str]] | None = None
    # Set for a deferred protocol whose requests are gathered into shared upstream jobs.
    grouping: Grouping | None = None


def always(route: Route) -> bool:
    """For `takes_callback`: every route of the protocol takes a callback URL."""
    return True


def check(reply: UpstreamReply | None, classify: Callable[[UpstreamReply], Failure | None]
          ) -> UpstreamReply:
    """The reply if it is a success, else raise its classified failure."""
    if reply is None:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "no reply"))
    failure = classify(reply)
    if failure is not None:
        raise UpstreamError(failure)
    return reply


def exchange(call: UpstreamCall, classify: Callable[[UpstreamReply], Failure | None],
             parse: Callable[[UpstreamReply, ImageRequest], ImageResult],
             request: ImageRequest) -> Flow:
    """The flow of a synchronous protocol: one call, one reply."""
    reply = check((yield call), classify)
    return parse(reply, request)
