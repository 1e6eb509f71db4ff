"""The admin API: tenant keys and usage for operators, behind the admin key.

`Authorization: Bearer <admin_key>`. Without an admin key configured the admin API is off
(403 saying how to turn it on). Keys are shown once, at creation and rotation, and so is a
key's webhook signing secret (at creation and its own rotation); listings carry a hint,
never the key or the secret.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api import inputs, usage
from proxy.api.errors import ApiError, bad_request
from proxy.billing.keys import KeyLimits, KeyRecord, LimitError, describe, parse_limits
from proxy.billing.webhook_secrets import GRACE_S, MAX_GRACE_HOURS
from proxy.catalog import STRATEGIES
from proxy.services import Services, services


def admin_services(request: Request) -> Services:
    """The services, once the request carries the admin key; the admin API is off (403)
    while no admin key is configured."""
    svc = services(request)
    if svc.config.admin_key is None:
        raise ApiError(403, "the admin API is off: set admin_key (SWITCHYARD_ADMIN_KEY)",
                       type="permission_error", code="admin_api_disabled")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = svc.config.admin_key.reveal().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(401, "the admin API needs 'Authorization: Bearer <admin key>'",
                       code="invalid_admin_key")
    return svc


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


async def _object(request: Request) -> dict[str, Any]:
    """The JSON object body; none at all reads as {} (nothing to change)."""
    return inputs.parse_json_object(await request.body() or b"{}")


def _limits(data: dict[str, Any], base: KeyLimits, svc: Services) -> KeyLimits:
    try:
        limits = parse_limits(data, base, STRATEGIES)
    except LimitError as exc:
        raise bad_request(exc.field, str(exc)) from None
    if limits.plan is not None and limits.plan not in svc.plans:
        raise bad_request("plan", f"no plan {limits.plan!r} (known: {', '.join(svc.plans)})")
    return limits


async def _found(svc: Services, key_id: str) -> KeyRecord:
    record = await asyncio.to_thread(svc.store.get_key, key_id)
    if record is None:
        raise ApiError(404, f"no key with id {key_id!r}", code="not_found")
    return record


async def list_keys(request: Request) -> Response:
    svc = admin_services(request)
    records = await asyncio.to_thread(svc.store.list_keys)
    return _json({"object": "list", "data": [describe(r) for r in records]})


async def create_key(request: Request) -> Response:
    svc = admin_services(request)
    data = await _object(request)
    name, tenant = data.pop("name", None), data.pop("tenant", None)
    if not isinstance(name, str) or not name.strip():
        raise bad_request("name", "'name' is required", "missing_required_parameter")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise bad_request("tenant", "'tenant' must be a non-empty string")
    limits = _limits(data, KeyLimits(), svc)
    record, key = await asyncio.to_thread(svc.store.create_key, name.strip(), tenant, limits)
    secrets = await asyncio.to_thread(svc.store.webhook_secrets.of_key, record.id)
    assert secrets is not None
    return _json({**describe(record), "key": key, "webhook_secret": secrets.current}, 201)


async def get_key(request: Request) -> Response:
    svc = admin_services(request)
    return _json(describe(await _found(svc, inputs.path_param(request, "key_id"))))


async def update_key(request: Request) -> Response:
    svc = admin_services(request)
    record = await _found(svc, inputs.path_param(request, "key_id"))
    limits = _limits(await _object(request), record.limits, svc)
    updated = await asyncio.to_thread(svc.store.update_limits, record.id, limits)
    svc.keys.forget_id(record.id)
    await _refresh_gauge(svc, record.id)
    return _json(describe(updated or record))


async def revoke_key(request: Request) -> Response:
    svc = admin_services(request)
    record = await _found(svc, inputs.path_param(request, "key_id"))
    revoked = await asyncio.to_thread(svc.store.revoke_key, record.id)
    svc.keys.forget_id(record.id)
    await _refresh_gauge(svc, record.id)
    return _json({**describe(await _found(svc, record.id)), "revoked": revoked})


async def _refresh_gauge(svc: Services, key_id: str) -> None:
    """Its remaining budget as it is now (a revoked key's gauge goes away)."""
    if svc.config.metrics_per_key:
        await asyncio.to_thread(svc.budget_gauges.refresh, svc.store, [key_id])


async def rotate_key(request: Request) -> Response:
    svc = admin_services(request)
    record = await _found(svc, inputs.path_param(request, "key_id"))
    rotated = await asyncio.to_thread(svc.store.rotate_key, record.id)
    svc.keys.forget_id(record.id)
    if rotated is None:
        raise ApiError(409, f"key {record.id} is revoked; create a new one", code="key_revoked")
    new_record, key = rotated
    return _json({**describe(new_record), "key": key})


async def rotate_webhook_secret(request: Request) -> Response:
    """A new webhook signing secret for the key; `grace_hours` (default 24, 0 to end it now)
    is how long the one before it still signs beside it."""
    svc = admin_services(request)
    record = await _found(svc, inputs.path_param(request, "key_id"))
    grace = (await _object(request)).get("grace_hours", GRACE_S / 3600)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or \
            not 0 <= grace <= MAX_GRACE_HOURS:
        raise bad_request("grace_hours", f"'grace_hours' must be a number of hours from 0 to "
                                         f"{MAX_GRACE_HOURS}")
    rotated = await asyncio.to_thread(svc.store.webhook_secrets.rotate, record.id, grace * 3600)
    if rotated is None:
        raise ApiError(409, f"key {record.id} is revoked; create a new one", code="key_revoked")
    secret, until = rotated
    return _json({**describe(record), "webhook_secret": secret,
                  "previous_webhook_secret_until": until})


async def admin_usage(request: Request) -> Response:
    svc = admin_services(request)
    return await usage.report(request, svc, key_id=inputs.query(request, "key"))
