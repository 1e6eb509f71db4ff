"""Usage reports: GET /v1/usage for the calling key's own totals, and the shared report the
admin API serves for any key.

Query: `from` and `to` (UTC dates, YYYY-MM-DD; `to` inclusive), `group_by` (comma-separated:
day, model, provider, key; /v1/usage may group by day and model only), `format` (json, or csv:
the lines `switchyard usage --csv` prints). Each row says what its images would have cost on
their model's reference route and what routing saved (proxy/billing/savings.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api.auth import authenticate
from proxy.api.errors import bad_request
from proxy.billing import savings
from proxy.billing.amounts import dollars
from proxy.billing.usage import GROUPS, UsageRow, as_csv
from proxy.services import Services, services

TENANT_GROUPS = ("day", "model")


async def own_usage(request: Request) -> Response:
    """The calling key's usage, and nobody else's."""
    svc = services(request)
    key = await authenticate(request, svc)
    return await report(request, svc, key_id=key.id, allowed=TENANT_GROUPS)


async def report(request: Request, svc: Services, key_id: str | None,
                 allowed: tuple[str, ...] = tuple(GROUPS)) -> Response:
    query = request.query_params
    group_by = [g for g in query.get("group_by", "day,model").split(",") if g]
    unknown = [g for g in group_by if g not in allowed]
    if unknown:
        raise bad_request("group_by", f"group_by may hold {', '.join(allowed)}; got "
                                      f"{unknown[0]!r}")
    start = _date(query.get("from"), "from")
    end = _date(query.get("to"), "to")
    form = query.get("format", "json")
    if form not in ("json", "csv"):
        raise bad_request("format", "'format' must be json or csv")
    rows = await asyncio.to_thread(_rows, svc, group_by, (start, end), key_id)
    if form == "csv":
        return Response(as_csv(group_by, rows), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="usage.csv"'})
    body: dict[str, Any] = {"object": "list", "group_by": group_by,
                            "data": [as_json(row) for row in rows]}
    return Response(orjson.dumps(body), media_type="application/json")


def _rows(svc: Services, group_by: list[str], days: tuple[int | None, int | None],
          key_id: str | None) -> list[UsageRow]:
    """The report, off the event loop (the catalog's files are read for reference prices)."""
    start, end = days
    reference = savings.for_config(svc.config.routes_dir, svc.config.reference_routes)
    return svc.store.usage.report(group_by, start, end + 86400 if end is not None else None,
                                  key_id, reference)


def as_json(row: UsageRow) -> dict[str, Any]:
    return {**row.group, "requests": row.requests, "succeeded": row.succeeded,
            "images": row.images, "billed_usd": dollars(row.billed_usd),
            "upstream_usd": dollars(row.upstream_usd),
            "reference_usd": dollars(row.reference_usd), "saved_usd": dollars(row.saved_usd)}


def _date(value: str | None, param: str) -> int | None:
    """A UTC date as epoch seconds at its midnight."""
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise bad_request(param, f"'{param}' must be a date, YYYY-MM-DD") from None
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
