"""Traces (OpenTelemetry), seen from the request path: no-op calls unless tracing is on.

The request path calls these functions at its seams (the routing run, each attempt, each
upstream call, the ledger write, a queued job's run). While no tracer is active in the current
context they return one shared object that does nothing, and nothing here imports
OpenTelemetry: that lives in proxy/tracing/otel.py, imported only when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and the `otel`
extra is installed. No span attribute ever holds a key, a header value or a prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.billing.rows import Entry
    from proxy.catalog import Route
    from proxy.domain import ImageRequest, ImageResult, Served
    from proxy.providers.base import UpstreamCall, UpstreamReply
    from proxy.tracing.otel import Tracer

log = logging.getLogger("switchyard")

# The tracer of the app the current request or job belongs to. A ContextVar is per task, as
# OpenTelemetry's own context is: set by the server span (per request) and by the lifespan (its
# tasks, the job worker among them, inherit it). None everywhere when tracing is off.
ACTIVE: ContextVar[Tracer | None] = ContextVar("switchyard_tracer", default=None)

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Span(Protocol):
    """One span as the request path sees it; a context manager that ends it. An exception
    leaving it is its outcome: a failure class, `cancelled`, or the exception's type alone."""

    def __enter__(self) -> Span: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def set(self, name: str, value: str | int | float | bool) -> None: ...

    def served(self, served: Served) -> None:
        """The routing run's result: who served it, after which attempts, at what cost."""

    def delivered(self, result: ImageResult) -> None:
        """An attempt's images and their size."""

    def replied(self, reply: UpstreamReply) -> None:
        """An upstream call's status and reply size."""

    def outgoing(self, call: UpstreamCall) -> UpstreamCall:
        """The call with this span's `traceparent` among its headers."""


class _Off:
    """The span of a request that is not traced: every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def set(self, name: str, value: str | int | float | bool) -> None:
        return None

    def served(self, served: Served) -> None:
        return None

    def delivered(self, result: ImageResult) -> None:
        return None

    def replied(self, reply: UpstreamReply) -> None:
        return None

    def outgoing(self, call: UpstreamCall) -> UpstreamCall:
        return call


OFF = _Off()


def enabled(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and the SDK not disabled."""
    return any(env.get(name) for name in ENDPOINTS) and \
        env.get("OTEL_SDK_DISABLED", "").strip().lower() != "true" and \
        env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"


def from_environment(env: Mapping[str, str]) -> Tracer | None:
    """A tracer exporting over OTLP/HTTP when the environment asks for traces; None (and no
    OpenTelemetry import) otherwise, or when the `otel` extra is not installed (said once)."""
    if not enabled(env):
        return None
    try:
        from proxy.tracing.otel import Tracer
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
                    "traces are off (pip install 'switchyard[otel]')")
        return None
    return Tracer()


def routing(request: ImageRequest, plan: Sequence[Route], strategy: str) -> Span:
    """The span of one routing run: its plan, then the attempts made under it."""
    tracer = ACTIVE.get()
    return OFF if tracer is None else tracer.routing(request, plan, strategy)


def attempt(route: Route, request: ImageRequest) -> Span:
    """The span of one attempt at one route."""
    tracer = ACTIVE.get()
    return OFF if tracer is None else tracer.attempt(route, request)


def upstream(call: UpstreamCall, provider: str) -> Span:
    """The span of one upstream call (submit, poll or fetch), retries included."""
    tracer = ACTIVE.get()
    return OFF if tracer is None else tracer.upstream(call, provider)


def ledger(entry: Entry) -> Span:
    """The span of the request's ledger write."""
    tracer = ACTIVE.get()
    return OFF if tracer is None else tracer.ledger(entry)


def job(traceparent: str | None, job_id: str, batch_id: str | None) -> Span:
    """The span of one run of a queued job, in the trace of the request that queued it."""
    tracer = ACTIVE.get()
    return OFF if tracer is None else tracer.job(traceparent, job_id, batch_id)


def traceparent() -> str | None:
    """The current span as a W3C traceparent, to be stored with work queued now; None when
    tracing is off."""
    tracer = ACTIVE.get()
    return None if tracer is None else tracer.traceparent()
