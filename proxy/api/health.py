"""Liveness and readiness: unauthenticated, for orchestrators, so they tell nothing secret
(the exposition, which does, is proxy/api/metrics.py)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.billing.db import DatabaseUnavailable
from proxy.services import services

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
