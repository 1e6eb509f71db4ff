"""The console's admin operations (proxy/api/console_api.py) for the OpenAPI document, as data;
openapi_ours.py merges them with the rest of our surface."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
_STRING = {"type": "string"}
_MONEY = {"anyOf": [_STRING, {"type": "null"}]}
_SECONDS = {"anyOf": [{"type": "number"}, {"type": "null"}]}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: Json) -> Json:
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _object(required: dict[str, Json]) -> Json:
    return {"type": "object", "required": list(required), "properties": required}


def console_schemas() -> Json:
    tier = _object({"price_usd": _MONEY, "expected_s": {"type": "number"},
                    "router_p95_s": {"type": "number"}, "p50_s": _SECONDS,
                    "p95_s": _SECONDS, "samples": {"type": "integer"}})
    route = _object({
        "id": _STRING, "provider": _STRING, "upstream_model": _STRING,
        "tiers": {"type": "object", "additionalProperties": tier},
        "success_ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "in_flight": {"type": "integer"}, "host_in_flight": {"type": "integer"},
        "host_cap": {"type": "integer"},
        "breaker": {"type": "string", "enum": ["closed", "open", "half_open"]},
        "available": {"type": "boolean"}, "rest": {"anyOf": [_STRING, {"type": "null"}]}})
    picks = {"type": "object", "additionalProperties": {
        "type": "object", "additionalProperties": {"anyOf": [_STRING, {"type": "null"}]}},
        "description": "tier -> strategy -> the route id it would pick now"}
    model = _object({"model": _STRING, "default_strategy": _STRING,
                     "tiers": {"type": "array", "items": _STRING}, "picks": picks,
                     "routes": {"type": "array", "items": route}})
    request = _object({"id": _STRING, "key_id": _STRING, "model": _STRING,
                       "provider": {"anyOf": [_STRING, {"type": "null"}]},
                       "outcome": _STRING, "attempts": {"type": "integer"},
                       "latency_ms": {"type": "integer"}, "billed_usd": _STRING,
                       "upstream_usd": _STRING, "created_at": {"type": "integer"}})
    work = _object({"id": _STRING, "kind": {"type": "string", "enum": ["job", "batch"]},
                    "key_id": _STRING, "state": _STRING, "total": {"type": "integer"},
                    "done": {"type": "integer"}, "failed": {"type": "integer"}})
    budget = _object({"key_id": _STRING, "period": _STRING, "budget_usd": _STRING,
                      "spent_usd": _STRING, "reserved_usd": _STRING})
    return {
        "RouteHealth": _object({"object": {"type": "string", "enum": ["list"]},
                                "strategies": {"type": "array", "items": _STRING},
                                "data": {"type": "array", "items": model}}),
        "Activity": _object({"object": {"type": "string", "enum": ["activity"]},
                             "requests": {"type": "array", "items": request},
                             "jobs": {"type": "array", "items": work},
                             "batches": {"type": "array", "items": work}}),
        "Budgets": _object({"object": {"type": "string", "enum": ["list"]},
                            "data": {"type": "array", "items": budget}}),
    }


def console_paths(admin: list[Json], limit: Json) -> Json:
    """GET /admin/routes, /admin/activity and /admin/budgets."""
    model = {"in": "query", "name": "model", "required": False, "schema": _STRING,
             "description": "one model (a name or an alias)"}
    key = {"in": "query", "name": "key", "required": False, "schema": _STRING,
           "description": "one key's id"}
    return {
        "/admin/routes": {"get": {
            "operationId": "adminRoutes", "security": admin,
            "summary": "Every route's price per tier, latencies, success ratio, load and "
                       "breaker, and what each strategy would pick now",
            "parameters": [model], "responses": {"200": _ok(_ref("RouteHealth"))}}},
        "/admin/activity": {"get": {
            "operationId": "adminActivity", "security": admin,
            "summary": "The latest requests (never a prompt), async jobs and batches",
            "parameters": [limit, key], "responses": {"200": _ok(_ref("Activity"))}}},
        "/admin/budgets": {"get": {
            "operationId": "adminBudgets", "security": admin,
            "summary": "Each active key with a budget: spent and reserved this period",
            "responses": {"200": _ok(_ref("Budgets"))}}},
    }
