"""Traces through the OpenTelemetry SDK: imported only when tracing is on (proxy/tracing).

One TracerProvider per app, configured by the standard environment variables (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_*, OTEL_BSP_*), exporting
over OTLP/HTTP from the SDK's batch thread, off the event loop. Propagation is W3C trace
context alone: a client's `traceparent` is the server span's parent, and each upstream call
carries its own (baggage from a client is never handed to third-party hosts). Attributes name
routes, providers, ids, classes, prices and sizes; never a key, a header value, a URL's path or
query (only its route, parameters named) or a prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType
from urllib.parse import urlsplit

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.billing.rows import Entry
from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult, Served
from proxy.providers.base import UpstreamCall, UpstreamReply
from proxy.tracing import ACTIVE

PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = (b"traceparent", b"tracestate")
Value = str | int | float | bool


class Handle:
    """One span, current while its block runs; what leaves the block is its outcome."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Handle:
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None:
                _failed(self._span, exc)
        finally:
            context.detach(self._token)  # type: ignore[arg-type]
            self._span.end()

    def set(self, name: str, value: Value) -> None:
        self._span.set_attribute(name, value)

    def served(self, served: Served) -> None:
        self._span.set_attributes({
            "switchyard.route": served.route_id, "switchyard.provider": served.provider,
            "switchyard.attempts": len(served.attempts),
            "switchyard.attempt_log": ", ".join(f"{a.provider}={a.failure or 'ok'}"
                                                for a in served.attempts),
            "switchyard.cost_usd": float(served.cost_usd),
            "switchyard.hedge_cost_usd": float(served.hedge_cost_usd),
            "switchyard.outcome": "success"})

    def delivered(self, result: ImageResult) -> None:
        """The images' size is their decoded bytes, from the base64 text's length."""
        self._span.set_attributes({
            "switchyard.outcome": "success", "switchyard.images": len(result.images),
            "switchyard.bytes": sum(len(image.b64) * 3 // 4 for image in result.images)})

    def replied(self, reply: UpstreamReply) -> None:
        self._span.set_attributes({"http.response.status_code": reply.status,
                                   "switchyard.bytes": len(reply.body)})
        if reply.status >= 400:
            self._span.set_status(Status(StatusCode.ERROR))

    def outgoing(self, call: UpstreamCall) -> UpstreamCall:
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, trace.set_span_in_context(self._span))
        return replace(call, headers={**call.headers, **carrier})


def _failed(span: trace.Span, exc: BaseException) -> None:
    """The outcome of a span an exception ended: its failure class if it carries one (an
    UpstreamError, RoutesFailed), else the exception's type. Never its message: upstream error
    text may quote the prompt."""
    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute("switchyard.outcome", "cancelled")
        return
    failure = getattr(exc, "failure", None)
    kind = getattr(getattr(failure, "kind", None), "value", None)
    if isinstance(kind, str):
        span.set_attributes({"switchyard.outcome": kind, "switchyard.failure": kind,
                             "error.type": kind})
        attempts = getattr(exc, "attempts", None)
        if isinstance(attempts, tuple):
            span.set_attributes({"switchyard.attempts": len(attempts),
                                 "switchyard.attempt_log": ", ".join(
                                     f"{a.provider}={a.failure or 'ok'}" for a in attempts)})
    else:
        span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, kind if isinstance(kind, str) else None))


class Tracer:
    """The app's tracer: its provider and the spans of each seam (see proxy/tracing)."""

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        """Over OTLP/HTTP in batches by default; a given exporter (the SDK's in-memory one in
        tests) gets each span as it ends."""
        self.provider = TracerProvider(resource=_resource())
        processor: SpanProcessor = SimpleSpanProcessor(exporter) if exporter is not None else \
            BatchSpanProcessor(_otlp())
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("switchyard")

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """The outermost middleware: a server span per HTTP request."""
        return ServerSpans(app, self)

    def start(self, name: str, kind: SpanKind, attributes: dict[str, Value],
              parent: context.Context | None = None) -> trace.Span:
        return self._tracer.start_span(name, parent, kind, attributes)

    def routing(self, request: ImageRequest, plan: Sequence[Route], strategy: str) -> Handle:
        return Handle(self.start(f"route {request.model}", SpanKind.INTERNAL, {
            "switchyard.model": request.model, "switchyard.strategy": strategy,
            "switchyard.tier": request.geometry.tier, "switchyard.n": request.n,
            "switchyard.plan": ", ".join(route.id for route in plan),
            "switchyard.hedge": bool(request.policy.hedge)}))

    def attempt(self, route: Route, request: ImageRequest) -> Handle:
        attributes: dict[str, Value] = {
            "switchyard.provider": route.provider.name, "switchyard.route": route.id,
            "switchyard.upstream_model": route.upstream_model,
            "switchyard.tier": request.geometry.tier}
        with contextlib.suppress(KeyError):  # a route without a price for the tier: none
            attributes["switchyard.price_usd"] = float(route.quote(request))
        return Handle(self.start(f"attempt {route.provider.name}", SpanKind.INTERNAL,
                                 attributes))

    def upstream(self, call: UpstreamCall, provider: str) -> Handle:
        return Handle(self.start(f"{call.kind} {provider}", SpanKind.CLIENT, {
            "switchyard.provider": provider, "switchyard.call": call.kind,
            "http.request.method": call.method,
            "server.address": urlsplit(call.url).hostname or ""}))

    def ledger(self, entry: Entry) -> Handle:
        return Handle(self.start("ledger write", SpanKind.INTERNAL, {
            "switchyard.request_id": entry.request_id, "switchyard.key_id": entry.key_id,
            "switchyard.outcome": entry.outcome, "switchyard.images": entry.n_delivered,
            "switchyard.billed_usd": entry.billed_micros / 1e6,
            "switchyard.upstream_usd": entry.upstream_micros / 1e6}))

    def job(self, traceparent: str | None, job_id: str, batch_id: str | None) -> Handle:
        parent = PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        attributes: dict[str, Value] = {"switchyard.job_id": job_id}
        if batch_id is not None:
            attributes["switchyard.batch_id"] = batch_id
        return Handle(self.start("batch item" if batch_id else "job", SpanKind.CONSUMER,
                                 attributes, parent))

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")

    async def close(self) -> None:
        """Export what is left (off the loop: a collector that is away takes its timeout)."""
        await asyncio.to_thread(self.provider.shutdown)


class ServerSpans:
    """ASGI middleware: each HTTP request a SERVER span, the client's traceparent its parent,
    and the app's tracer active for everything the request does."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carried = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in scope["headers"] if name in _CARRIED}
        method = scope["method"]
        # No url.path: a path may carry a capability (/callbacks/{provider}/{token}); the
        # route, with its parameters named, is set once the app has matched it.
        span = self.tracer.start(method, SpanKind.SERVER, {
            "http.request.method": method, "url.scheme": scope.get("scheme", "http")},
            PROPAGATOR.extract(carried) if carried else None)
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        active = ACTIVE.set(self.tracer)
        attached = context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            context.detach(attached)
            ACTIVE.reset(active)
            _answered(span, scope, status)
            span.end()


def _answered(span: trace.Span, scope: Scope, status: int) -> None:
    """The server span's route, status and request id, once the app is done. An unmatched
    path (404) names no route: a span name must not grow with what clients send."""
    method = scope["method"]
    if status and status != 404:
        route = _route(scope)
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id:
        span.set_attribute("switchyard.request_id", request_id)


def _route(scope: Scope) -> str:
    """The path with its parameters' values put back as names: /v1/images/jobs/{job_id}."""
    path: str = scope["path"]
    for name, value in (scope.get("path_params") or {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


def _resource() -> Resource:
    """The environment's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named
    `switchyard` unless it names itself."""
    from_env = Resource.create()
    if str(from_env.attributes.get("service.name", "")).startswith("unknown_service"):
        return from_env.merge(Resource({"service.name": "switchyard"}))
    return from_env


def _otlp() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
