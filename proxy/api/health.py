"""Liveness, readiness and the Prometheus exposition: unauthenticated, for orchestrators."""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import metrics as metrics_module
from proxy.billing.db import DatabaseUnavailable
from proxy.services import Services, services

READY_TIMEOUT_S = 1.0  # an orchestrator's probe times out soon after


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the catalog serves at least one model and the database takes a write now
    (asked afresh each time, within READY_TIMEOUT_S: ready again by itself when it is back).
    In fleet mode the body says whether Redis answers; without it a replica still serves, on
    its own limits and slots, so it stays ready."""
    svc = services(request)
    problems = []
    if not svc.catalog.models:
        problems.append("the catalog has no live model")
    try:
        await asyncio.to_thread(svc.store.ping, READY_TIMEOUT_S)
    except DatabaseUnavailable as exc:
        problems.append(str(exc))  # names the engine and why, never its URL
    except Exception as exc:
        problems.append(f"the store is unavailable ({type(exc).__name__})")
    body = {"status": "ok" if not problems else "unavailable", "problems": problems,
            "models": len(svc.catalog.models), "demo": svc.catalog.demo,
            "fleet": svc.state.describe()}
    return JSONResponse(body, 200 if not problems else 503)


async def metrics(request: Request) -> Response:
    """The exposition; under `serve --workers N`, every worker's figures merged (prometheus
    multiprocess mode), whichever worker answers the scrape."""
    export_route_health(services(request))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def export_route_health(svc: Services) -> None:
    """Route health and host slot gauges, read fresh at scrape time (breakers also change as
    time passes)."""
    health = svc.router.health
    for model in svc.catalog.models:
        for route in model.routes:
            labels = (model.name, route.provider.name)
            tracked = health.of(route)
            snaps = {tier: tracked.snapshot(tier) for tier in route.capabilities.tiers}
            first = next(iter(snaps.values()))
            state = first.state.value
            score = 0.0 if not first.available and state != "half_open" else \
                first.success_ratio * (0.5 if state == "half_open" else 1.0)
            metrics_module.ROUTE_SCORE.labels(*labels).set(score)
            metrics_module.ROUTE_SUCCESS.labels(*labels).set(first.success_ratio)
            metrics_module.ROUTE_BREAKER.labels(*labels).set(
                metrics_module.BREAKER_STATES[state])
            metrics_module.ROUTE_IN_FLIGHT.labels(*labels).set(first.in_flight)
            for tier, snap in snaps.items():
                metrics_module.ROUTE_LATENCY.labels(*labels, tier).set(snap.expected_s)
                metrics_module.ROUTE_P95.labels(*labels, tier).set(snap.p95_s)
    for provider in svc.catalog.providers:
        metrics_module.HOST_IN_FLIGHT.labels(provider.name).set(svc.state.slots.in_use(provider))
        metrics_module.HOST_MAX_IN_FLIGHT.labels(provider.name).set(provider.max_in_flight)
