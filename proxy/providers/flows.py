"""The only code that calls upstreams: drive an adapter's flow within a deadline.

Submits are sent once: a submit that may have been accepted is never repeated (the router
fails over to another host instead). Polls and fetches are idempotent and tolerate transient
errors until the deadline. URLs a provider hands back are checked against its allowed hosts
before any request goes there. A queued request's submits are written down as they go
(`Submits`), so its run after a crash polls the upstream task it started instead of paying
for another.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from proxy import tracing
from proxy.catalog import Provider, Route
from proxy.config import Secret
from proxy.domain import ImageRequest, ImageResult, Partials, Usage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.base import Adapter, Flow, Sleep, Steps, UpstreamCall, UpstreamReply
from proxy.providers.callbacks import Callbacks
from proxy.providers.grouping import Groups
from proxy.upstream.clients import Relay, send
from proxy.upstream.credentials import Credentials

TRANSIENT_RETRY_S = 1.0


class SubmitLog(Protocol):
    """One flow's submits, written down (proxy/providers/resume.py)."""

    async def sending(self, ordinal: int) -> UpstreamReply | None:
        """The reply this submit got in an earlier run (the flow goes on from it and nothing
        is sent), or None once the submit is written down as in flight."""

    async def answered(self, ordinal: int, reply: UpstreamReply) -> None:
        """The flow goes on past this submit: keep its reply, before the next call."""

    async def failed(self) -> None:
        """The flow failed: none of its submits needs resuming or reporting. (A flow that
        delivered keeps them until the job's outcome is stored.)"""


class Submits(Protocol):
    """A ticketed request's submits across its attempts; `resumed` names the routes holding
    upstream work of an earlier run (the router tries them first)."""

    resumed: frozenset[str]

    def log(self, route: Route, request: ImageRequest, part: int) -> SubmitLog: ...


def host_allowed(url: str, provider: Provider) -> bool:
    """A URL may be called if it is https (or the provider's own scheme and host) and its host
    is the provider's or matches one of its allowed_hosts (`*.example.com` covers subdomains)."""
    parts = urlsplit(url)
    base = urlsplit(provider.base_url)
    host = parts.hostname or ""
    if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
        return True
    if parts.scheme != "https":
        return False
    return any(host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
               for pattern in provider.allowed_hosts)


async def generate(adapter: Adapter, route: Route, request: ImageRequest,
                   client: httpx.AsyncClient, deadline: float,
                   credentials: Credentials | None = None,
                   callbacks: Callbacks | None = None,
                   groups: Groups | None = None,
                   submits: Submits | None = None) -> ImageResult:
    """One attempt at one route. n beyond what one call returns runs as parallel flows; what
    they deliver is merged (fewer images than asked is still a success, billed as delivered).

    A provider with a token command gets a fresh-enough token as its key for this attempt; a
    token the upstream refuses is dropped so the next attempt runs the command again."""
    command = credentials.command(route.provider.name) if credentials else None
    if command is not None:
        keyed = replace(route, provider=replace(route.provider, key=Secret(await command.token())))
        try:
            return await generate(adapter, keyed, request, client, deadline,
                                  callbacks=callbacks, groups=groups, submits=submits)
        except UpstreamError as exc:
            if exc.failure.kind is Kind.AUTH:
                command.invalidate()
            raise
    try:
        if groups is not None and adapter.grouping is not None and route.provider.deferred:
            # A batch API: this request joins a shared upstream job (grouping.py).
            return _nonempty(await groups.generate(adapter.grouping, route, request, client,
                                                   deadline))
        return await _fan_out(adapter, route, request, client, deadline, callbacks, submits)
    except UpstreamError as exc:
        raise UpstreamError(_scrubbed(exc.failure, route)) from None


def _scrubbed(failure: Failure, route: Route) -> Failure:
    """The failure with the provider's key cut out of its message: a host that quotes the key
    back in an error body must not hand it to a client or a log."""
    return failure.without(route.provider.key.reveal()) if route.provider.key else failure


async def _fan_out(adapter: Adapter, route: Route, request: ImageRequest,
                   client: httpx.AsyncClient, deadline: float,
                   callbacks: Callbacks | None = None,
                   submits: Submits | None = None) -> ImageResult:
    per_call = max(1, adapter.images_per_call)
    if request.n <= per_call:
        return await _one(adapter, route, request, client, deadline, callbacks,
                          submits.log(route, request, 0) if submits else None)
    counts = [per_call] * (request.n // per_call) + ([request.n % per_call] if
                                                     request.n % per_call else [])
    parts = [_with_n(request, count) for count in counts]
    outcomes = await asyncio.gather(*(
        _one(adapter, route, part, client, deadline, callbacks,
             submits.log(route, part, index) if submits else None)
        for index, part in enumerate(parts)), return_exceptions=True)
    results = [o for o in outcomes if isinstance(o, ImageResult)]
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, UpstreamError):
            raise outcome
    if not results:
        first = next(o for o in outcomes if isinstance(o, UpstreamError))
        raise first
    return ImageResult(images=tuple(i for r in results for i in r.images), size=results[0].size,
                       upstream_id=results[0].upstream_id,
                       usage=Usage.total(r.usage for r in results),
                       price_factor=_price_factor(results),
                       text=" ".join(r.text for r in results if r.text) or None)


async def _one(adapter: Adapter, route: Route, request: ImageRequest,
               client: httpx.AsyncClient, deadline: float,
               callbacks: Callbacks | None, log: SubmitLog | None = None) -> ImageResult:
    """One upstream job. With callbacks on and a protocol that takes a callback URL, the job
    gets a ticket of its own: its URL goes to the host (route option `callback_url`) and the
    flow's pauses end when the host calls back, with slow polling as the fallback."""
    if callbacks is None or not callbacks.enabled or adapter.takes_callback is None \
            or not adapter.takes_callback(route):
        return await drive(adapter.flow(request, route), route, client, deadline, log=log,
                           partials=request.partials)
    token, url = callbacks.open(route.provider.name)
    hooked = replace(route, options={**route.options, "callback_url": url})

    async def until_called(seconds: float, deadline: float) -> None:
        remaining = deadline - _now()
        if remaining <= 0:
            raise UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached"))
        await callbacks.wait(token, min(max(seconds, callbacks.fallback_poll_s), remaining))

    try:
        return await drive(adapter.flow(request, hooked), hooked, client, deadline,
                           until_called, log, request.partials)
    finally:
        callbacks.close(token)


def _price_factor(results: list[ImageResult]) -> Decimal | None:
    """The calls' price factors, weighed by their images (one request's images are all of
    one size, so each costs the same at its call's tier); None if no call had one."""
    if all(r.price_factor is None for r in results):
        return None
    weighed = sum(((r.price_factor or Decimal(1)) * len(r.images) for r in results), Decimal(0))
    return weighed / sum(len(r.images) for r in results)


def _with_n(request: ImageRequest, n: int) -> ImageRequest:
    return replace(request, n=n)


Pause = Callable[[float, float], Awaitable[None]]


async def drive(flow: Flow, route: Route, client: httpx.AsyncClient,
                deadline: float, pause: Pause | None = None,
                log: SubmitLog | None = None, partials: Partials | None = None) -> ImageResult:
    """Run a flow to its result: send what it yields, sleep when it asks (or, with a callback
    ticket, until the host calls back), within the deadline."""
    return _nonempty(await run_steps(flow, route, client, deadline, pause, log, partials))


async def run_steps(flow: Steps, route: Route, client: httpx.AsyncClient,
                    deadline: float, pause: Pause | None = None,
                    log: SubmitLog | None = None, partials: Partials | None = None) -> Any:
    """Run any adapter generator to what it returns (a group's job name, its ended job).

    With a `log`, each submit is written down before it is sent, and its reply kept before
    the flow's next call; a submit an earlier run made is answered from the log, not sent.
    A flow that fails says so to its log. A streamed call's partial images go to `partials`
    as they arrive, in this route's name."""
    relay = None if partials is None else functools.partial(partials.put, route.id)
    pause = pause or _sleep
    reply: UpstreamReply | None = None
    submits = 0
    unkept: UpstreamReply | None = None  # the last submit's reply, not yet in the log
    try:
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value
            except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                    orjson.JSONDecodeError):
                raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply was malformed",
                                            status=reply.status if reply else None)) from None
            if unkept is not None and log is not None:
                await log.answered(submits - 1, unkept)  # the flow goes on from it
                unkept = None
            if isinstance(step, Sleep):
                await pause(step.seconds, deadline)
                reply = None
            elif log is None or step.kind != "submit":
                reply = await _call(step, route, client, deadline, relay)
            else:
                reply = await log.sending(submits)
                if reply is None:
                    reply = unkept = await _call(step, route, client, deadline, relay)
                submits += 1
    except UpstreamError:
        if log is not None:
            await log.failed()
        raise


async def _call(call: UpstreamCall, route: Route, client: httpx.AsyncClient,
                deadline: float, relay: Relay | None = None) -> UpstreamReply:
    with tracing.upstream(call, route.provider.name) as span:
        reply = await _calling(span.outgoing(call), route, client, deadline, relay)
        span.replied(reply)
        return reply


async def _calling(call: UpstreamCall, route: Route, client: httpx.AsyncClient,
                   deadline: float, relay: Relay | None = None) -> UpstreamReply:
    if call.kind != "submit" and not host_allowed(call.url, route.provider):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN,
                                    "upstream pointed to a host it is not allowed to use"))
    while True:
        remaining = deadline - _now()
        if remaining <= 0:
            raise UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached"))
        try:
            reply = await send(client, call, min(remaining, route.provider.timeout_s), relay)
        except UpstreamError as exc:
            if call.kind == "submit" or not exc.failure.retryable:
                raise
            await _sleep(TRANSIENT_RETRY_S, deadline)
            continue
        if call.kind in ("poll", "fetch") and not call.final and \
                (reply.status >= 500 or reply.status == 429):
            await _sleep(TRANSIENT_RETRY_S, deadline)
            continue
        return reply


async def _sleep(seconds: float, deadline: float) -> None:
    remaining = deadline - _now()
    if remaining <= 0:
        raise UpstreamError(Failure(Kind.TIMEOUT, "request deadline reached"))
    await asyncio.sleep(min(seconds, remaining))


def _now() -> float:
    """The clock deadlines are measured on: the running loop's, which is time.monotonic() on
    a normal loop and virtual time in the routing benchmark (proxy.bench.clock)."""
    return asyncio.get_running_loop().time()


def _nonempty(result: ImageResult) -> ImageResult:
    if not result.images:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream returned no image"))
    return result
