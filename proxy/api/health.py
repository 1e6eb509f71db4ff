"""Liveness, readiness and the Prometheus exposition: unauthenticated, for orchestrators."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.services import services


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the catalog serves at least one model and the store answers."""
    svc = services(request)
    problems = []
    if not svc.catalog.models:
        problems.append("the catalog has no live model")
    try:
        await asyncio.to_thread(svc.store.count_keys)
    except Exception as exc:
        problems.append(f"the store is unavailable ({type(exc).__name__})")
    body = {"status": "ok" if not problems else "unavailable", "problems": problems,
            "models": len(svc.catalog.models), "demo": svc.catalog.demo}
    return JSONResponse(body, 200 if not problems else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
