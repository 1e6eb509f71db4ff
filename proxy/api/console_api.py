"""The JSON the console reads beside the admin and usage APIs: live route health, recent
requests, jobs and batches, and each key's budget use.

GET /admin/routes, /admin/activity and /admin/budgets need the admin key (and are off without
one, as the whole admin API is); GET /v1/activity is a tenant key's own requests and work.
Route health is what the router ranks by (proxy/routing/health.py), read, never changed:
the same catalog and prices `switchyard routes list` prints, with the live evidence beside
them, and what each strategy would pick now.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api import inputs
from proxy.api.admin import admin_services
from proxy.api.auth import authenticate
from proxy.api.errors import bad_request
from proxy.billing import activity
from proxy.billing.amounts import dollars, period_label
from proxy.billing.store import Store
from proxy.catalog import STRATEGIES, Model, Route
from proxy.domain import Geometry, ImageRequest
from proxy.routing.health import Health, Snapshot, State
from proxy.routing.planning import patient_enough
from proxy.routing.strategies import rank
from proxy.services import Services, services

MAX_LIMIT = 200


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json",
                    headers={"cache-control": "no-store"})


async def routes(request: Request) -> Response:
    """Every live route per model: prices, latencies, success, load, breaker, and picks."""
    svc = admin_services(request)
    wanted = inputs.query(request, "model")
    models = svc.catalog.models
    if wanted is not None:
        model = svc.catalog.resolve(wanted)
        if model is None:
            raise bad_request("model", f"no model {wanted!r} is served here")
        models = (model,)
    observed = await asyncio.to_thread(activity.latencies, svc.store.db)
    data = [_model(svc, model, observed) for model in models]
    return _json({"object": "list", "data": data, "strategies": list(STRATEGIES)})


def _model(svc: Services, model: Model,
           observed: dict[tuple[str, str], activity.Observed]) -> dict[str, Any]:
    health = svc.router.health
    tiers = model.tiers()
    picks = {tier: _picks(model, tier, health) for tier in tiers}
    return {"model": model.name, "default_strategy": model.default_strategy,
            "tiers": list(tiers), "picks": picks,
            "routes": [_route(svc, route, tiers, observed) for route in model.routes]}


def _picks(model: Model, tier: str, health: Health) -> dict[str, str | None]:
    """strategy -> the route it would rank first for one image of `tier` now (a stale
    route's probe aside: that is a per-request coin, not a preference)."""
    request = ImageRequest(kind="generate", model=model.name, prompt="-", n=1,
                           geometry=Geometry("1:1", tier, None, "console"),
                           output_format="png", response_format="b64_json")
    candidates = [r for r in model.routes
                  if tier in r.price_per_image and patient_enough(r, request)]
    if not candidates:
        return {strategy: None for strategy in STRATEGIES}
    snapshots = health.snapshots(candidates, tier)
    return {strategy: rank(candidates, strategy, request, snapshots)[0].id
            for strategy in STRATEGIES}


def _route(svc: Services, route: Route, tiers: tuple[str, ...],
           observed: dict[tuple[str, str], activity.Observed]) -> dict[str, Any]:
    health = svc.router.health
    snaps = {tier: health.of(route).snapshot(tier) for tier in tiers
             if tier in route.price_per_image}
    first = next(iter(snaps.values()), None)
    per_tier = {}
    for tier, snap in snaps.items():
        seen = observed.get((route.id, tier))
        per_tier[tier] = {
            "price_usd": dollars(route.price_per_image[tier]),
            "expected_s": round(snap.expected_s, 3), "router_p95_s": round(snap.p95_s, 3),
            "p50_s": round(seen.p50_s, 3) if seen else None,
            "p95_s": round(seen.p95_s, 3) if seen else None,
            "samples": seen.samples if seen else 0}
    return {
        "id": route.id, "provider": route.provider.name, "protocol": route.provider.protocol,
        "upstream_model": route.upstream_model, "price_terms": route.price_terms,
        "deferred": route.provider.deferred, "tiers": per_tier,
        "success_ratio": round(first.success_ratio, 4) if first else None,
        "outcomes": first.samples if first else 0,
        "in_flight": first.in_flight if first else 0,
        "host_in_flight": svc.state.slots.in_use(route.provider),
        "host_cap": route.provider.max_in_flight,
        "breaker": first.state.value if first else State.CLOSED.value,
        "available": first.available if first else True,
        "stalled": first.stalled if first else False,
        "rest": _rest(first, health),
    }


def _rest(snap: Snapshot | None, health: Health) -> str | None:
    """Why a route takes no request now, in words (None: it does)."""
    if snap is None or (snap.available and not snap.stalled):
        return None
    s = health.settings
    if snap.state is State.OPEN:
        return (f"breaker open: resting {s.cooldown_s:g}-{s.max_cooldown_s:g} s, then a "
                "probe")
    if snap.state is State.HALF_OPEN:
        return "half open: its probe is running"
    if snap.stalled:
        return "stalled: an attempt is far past its p95 with nothing delivered since"
    return "cooling down: the host asked to wait (Retry-After or a 429)"


async def admin_activity(request: Request) -> Response:
    svc = admin_services(request)
    return await _activity(request, svc, inputs.query(request, "key"))


async def own_activity(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    return await _activity(request, svc, key.id)


async def _activity(request: Request, svc: Services, key_id: str | None) -> Response:
    """The latest requests, async jobs and batches (one key's, or everyone's)."""
    limit = inputs.query_integer(request, "limit", 1, MAX_LIMIT, 50)
    db = svc.store.db

    def read() -> dict[str, Any]:
        return {"requests": [_request(r) for r in activity.requests(db, key_id, limit)],
                "jobs": [_work(w) for w in activity.jobs(db, key_id, limit)],
                "batches": [_work(w) for w in activity.batches(db, key_id, limit)]}

    return _json({"object": "activity", **await asyncio.to_thread(read)})


def _request(row: activity.Request) -> dict[str, Any]:
    return {"id": row.request_id, "key_id": row.key_id, "model": row.model,
            "provider": row.provider, "tier": row.tier, "images": row.images,
            "outcome": row.outcome, "failure": row.failure, "attempts": row.attempts,
            "latency_ms": row.latency_ms, "billed_usd": dollars(row.billed_usd),
            "upstream_usd": dollars(row.upstream_usd), "created_at": row.created_at}


def _work(work: activity.Work) -> dict[str, Any]:
    return {"id": work.id, "kind": work.kind, "key_id": work.key_id, "state": work.state,
            "total": work.total, "done": work.done, "failed": work.failed,
            "created_at": work.created_at}


async def budgets(request: Request) -> Response:
    """Each key with a budget: what it spent and holds reserved in its current period."""
    svc = admin_services(request)
    data = await asyncio.to_thread(_budgets, svc.store, time.time())
    return _json({"object": "list", "data": data})


def _budgets(store: Store, now: float) -> list[dict[str, Any]]:
    found = []
    for record in store.list_keys():
        limits = record.limits
        if limits.budget_usd is None or not record.active:
            continue
        period = period_label(limits.budget_period, now)
        spent, reserved = store.money.spent(record.id, period)
        found.append({"key_id": record.id, "period": period,
                      "budget_usd": dollars(limits.budget_usd), "spent_usd": dollars(spent),
                      "reserved_usd": dollars(reserved)})
    return found
