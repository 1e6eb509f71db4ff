"""Switchyard's own surface for its OpenAPI document, as data: our fields on OpenAI's image
requests, async jobs, usage, the admin API, signed image links, callbacks and health.

openapi_build.py merges it with the operations taken from OpenAI's spec. Values that the code
also holds (aspect ratios, tiers, strategies) are read from the code, never copied.
"""

from __future__ import annotations

from typing import Any

from proxy.api.openapi_console import console_paths, console_schemas
from proxy.api.policy import HEADER as STRATEGY_HEADER
from proxy.billing.keys import MAX_BUDGET_USD, MAX_CACHE_TTL_S, MAX_COUNT, PERIODS
from proxy.billing.webhook_secrets import MAX_GRACE_HOURS
from proxy.catalog import STRATEGIES
from proxy.domain import ASPECT_RATIOS, TIERS

Json = dict[str, Any]


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Json) -> Json:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
# A prompt's text on the chat and Gemini surfaces: blank texts are skipped, and a conversation
# without any other text is refused (400).
TEXT = {"type": "string", "pattern": "\\S", "description": "text to draw (not blank)"}
UNIX = {"type": "integer", "format": "unixtime"}
ERRORS = ("400", "401", "403", "404", "405", "409", "413", "415", "429", "503")

# Our fields on OpenAI's image requests (the SDK sends them through extra_body).
IMAGE_EXTENSIONS: Json = {
    "aspect_ratio": {"type": "string", "enum": list(ASPECT_RATIOS),
                     "description": "Switchyard: the shape, instead of `size`."},
    "resolution": {"type": "string", "enum": list(TIERS),
                   "description": "Switchyard: the resolution tier, instead of `size` "
                                  "(case-insensitive)."},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1,
             "description": "Switchyard: a seed, for the hosts that take one."},
    "image_urls": {"type": "array", "maxItems": 16,
                   "items": {"type": "string", "description": "https:// or a data: URL"},
                   "description": "Switchyard: reference images by URL."},
    "route": ref("RoutePolicy"),
    "cache": {"type": "object", "additionalProperties": False,
              "properties": {"ttl_s": {"type": "integer", "minimum": 0,
                                       "maximum": MAX_CACHE_TTL_S}},
              "description": "Switchyard: answer from the response cache, and keep this "
                             "answer there, for `ttl_s` seconds (0: neither)."},
}
ASYNC_EXTENSIONS: Json = {
    "callback_url": {"type": "string", "maxLength": 2048,
                     "description": "Switchyard: queue the request as a job (202) and POST "
                                    "the finished job to this https URL."},
}
STRATEGY_PARAMETER: Json = {
    "in": "header", "name": STRATEGY_HEADER, "required": False,
    "schema": {"type": "string", "enum": list(STRATEGIES)},
    "description": "Switchyard: the routing strategy for this request."}
PREFER_PARAMETER: Json = {
    "in": "header", "name": "prefer", "required": False, "schema": STRING,
    "description": "Switchyard: `respond-async` queues the request as a job (202); JSON "
                   "bodies only."}
IDEMPOTENCY_PARAMETER: Json = {
    "in": "header", "name": "idempotency-key", "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "Switchyard: a retry with the same key is answered once, billed once."}
RESPONSE_HEADERS: Json = {
    name: {"schema": STRING, "description": text} for name, text in {
        "x-switchyard-provider": "the provider that served the request",
        "x-switchyard-route": "the route (provider and upstream model) that served it",
        "x-switchyard-cost-usd": "what the upstream charged, in US dollars",
        "x-switchyard-billed-usd": "what this key was billed, in US dollars",
        "x-switchyard-strategy": "the routing strategy used",
        "x-switchyard-attempts": "how many upstream attempts it took",
        "x-switchyard-cache": "hit (answered from the response cache), coalesced (shared "
                              "an identical request's upstream call) or miss; absent when "
                              "the request was not cacheable",
    }.items()}


def _limits() -> Json:
    count = {"type": "integer", "minimum": 1, "maximum": MAX_COUNT}
    return {
        "allowed_models": _nullable({"type": "array", "items": {"type": "string",
                                                                "minLength": 1}}),
        "strategy": _nullable({"type": "string", "enum": list(STRATEGIES)}),
        "plan": _nullable({"type": "string", "minLength": 1}),
        "budget_usd": _nullable({"anyOf": [
            {"type": "number", "minimum": 0, "maximum": MAX_BUDGET_USD},
            {"type": "string", "description": "a decimal number of US dollars"}]}),
        "budget_period": _nullable({"type": "string", "enum": list(PERIODS)}),
        "rpm": _nullable(count), "ipm": _nullable(count), "concurrency": _nullable(count),
        "cache_ttl_s": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_CACHE_TTL_S,
                                  "description": "Switchyard: keep and reuse this key's "
                                                 "answers this long (0: never)"}),
        "lane": _nullable({"type": "string", "enum": ["discount", "standard"],
                           "description": "Switchyard: discount: wait for a discount lane "
                                          "only; standard: never take one"}),
    }


def schemas() -> Json:
    limits = _limits()
    text, count = _nullable(STRING), _nullable({"type": "integer"})
    key_fields = {"id": STRING, "name": STRING, "tenant": STRING, "hint": STRING,
                  "created_at": UNIX, "revoked_at": _nullable(UNIX),
                  "active": {"type": "boolean"},
                  "allowed_models": _nullable({"type": "array", "items": STRING}),
                  "strategy": text, "plan": text, "budget_usd": text,
                  "budget_period": STRING, "rpm": count, "ipm": count, "concurrency": count,
                  "cache_ttl_s": count, "lane": text}
    return {
        "RoutePolicy": {
            "type": "object", "additionalProperties": False,
            "description": "Switchyard: how to route this request.",
            "properties": {
                "strategy": {"type": "string", "enum": list(STRATEGIES)},
                "max_price": {"type": "number", "minimum": 0},
                "max_latency_s": {"type": "number", "exclusiveMinimum": 0},
                "only": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "ignore": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "hedge": {"type": "boolean"},
                "lane": {"type": "string", "enum": ["discount", "standard"]}}},
        "ImageJob": {
            "type": "object", "required": ["id", "object", "status", "created_at"],
            "properties": {
                "id": STRING, "object": {"type": "string", "enum": ["image.job"]},
                "status": {"type": "string", "enum": ["queued", "processing", "succeeded",
                                                      "failed", "cancelled"]},
                "created_at": UNIX, "completed_at": _nullable(UNIX),
                "result": _nullable(ref("ImagesResponse")),
                "error": _nullable({"type": "object"})}},
        "UsageReport": {
            "type": "object", "required": ["object", "group_by", "data"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "group_by": {"type": "array", "items": STRING},
                "data": {"type": "array", "items": {
                    "type": "object",
                    "required": ["requests", "succeeded", "images", "billed_usd",
                                 "upstream_usd"],
                    "properties": {"requests": {"type": "integer"},
                                   "succeeded": {"type": "integer"},
                                   "images": {"type": "integer"},
                                   "billed_usd": STRING, "upstream_usd": STRING,
                                   "reference_usd": STRING, "saved_usd": STRING}}}}},
        "AdminKeyCreate": {"type": "object", "required": ["name"],
                           "additionalProperties": False,
                           "properties": {"name": {"type": "string", "minLength": 1},
                                          "tenant": {"type": "string", "minLength": 1},
                                          **limits}},
        "AdminKeyUpdate": {"type": "object", "additionalProperties": False,
                           "properties": limits},
        "AdminKey": {"type": "object", "required": list(key_fields),
                     "properties": {**key_fields,
                                    "key": {"type": "string",
                                            "description": "shown once: at creation and "
                                                           "rotation"},
                                    "webhook_secret": {
                                        "type": "string",
                                        "description": "the key's webhook signing secret, "
                                                       "shown once: at creation and its "
                                                       "rotation"},
                                    "previous_webhook_secret_until": _nullable(UNIX),
                                    "revoked": {"type": "boolean"}}},
        "WebhookSecretRotation": {
            "type": "object", "additionalProperties": False,
            "properties": {"grace_hours": {
                "type": "number", "minimum": 0, "maximum": MAX_GRACE_HOURS,
                "description": "how long the secret before it still signs (default 24)"}}},
        "AdminKeyList": {"type": "object", "required": ["object", "data"],
                         "properties": {"object": {"type": "string", "enum": ["list"]},
                                        "data": {"type": "array", "items": ref("AdminKey")}}},
        **console_schemas(),
        "Health": {"type": "object", "required": ["status"],
                   "properties": {"status": STRING}},
        "CallbackAck": {"type": "object", "required": ["received", "waiting"],
                        "properties": {"received": {"type": "boolean"},
                                       "waiting": {"type": "boolean"}}},
    }


def response(schema: Json, description: str = "OK") -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_events(data: Json, event: Json | None = None, done: str | None = None) -> Json:
    """The schema of one event of a text/event-stream whose data are JSON matching `data`:
    the event object ({event, data}) that OpenAPI 3.2's itemSchema describes, which
    schemathesis reads a 3.1 document's event-stream schema as, the data checked through
    contentMediaType and contentSchema. `done`: a last data line that is not JSON."""
    payload: Json = {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": data}
    if done is not None:
        payload = {"anyOf": [{"const": done}, payload]}
    properties = {"data": payload} if event is None else {"event": event, "data": payload}
    return {"type": "object", "required": ["data"], "properties": properties}


def _path(name: str, description: str) -> Json:
    return {"in": "path", "name": name, "required": True, "schema": STRING,
            "description": description}


def _query(name: str, description: str) -> Json:
    return {"in": "query", "name": name, "required": False, "schema": STRING,
            "description": description}


ADMIN: list[Json] = [{"AdminKey": []}]
PUBLIC: list[Json] = []
_KEY_ID = _path("key_id", "the key's id (key_…)")
_USAGE_QUERY = [_query("from", "first UTC day, YYYY-MM-DD"),
                _query("to", "last UTC day (inclusive), YYYY-MM-DD"),
                _query("group_by", "comma-separated: day, model (and, for the admin API, "
                                   "provider, key)"),
                {**_query("format", "json (default), or csv: `switchyard usage --csv`'s "
                                    "lines"), "schema": {"type": "string",
                                                         "enum": ["json", "csv"]}}]
_USAGE_OK = {"description": "OK: each row also prices its images on the model's reference "
                            "route (reference_usd) and says what routing saved (saved_usd)",
             "content": {"application/json": {"schema": ref("UsageReport")},
                         "text/csv": {"schema": STRING}}}
_LIMIT = _query("limit", "how many of each (1 to 200, default 50)")


def paths() -> Json:
    """Our operations: (path -> method -> operation), without their error responses
    (openapi_build adds OpenAI's error body to every operation)."""
    key = ref("AdminKey")
    return {
        "/v1/images/jobs/{job_id}": {"get": {
            "operationId": "getImageJob", "summary": "An asynchronous image request's job",
            "parameters": [_path("job_id", "the job's id, from the 202 answer")],
            "responses": {"200": response(ref("ImageJob"))}}},
        "/v1/usage": {"get": {
            "operationId": "ownUsage", "summary": "The calling key's usage",
            "parameters": _USAGE_QUERY, "responses": {"200": _USAGE_OK}}},
        "/v1/activity": {"get": {
            "operationId": "ownActivity", "summary": "The calling key's latest requests, "
                                                     "async jobs and batches (the console's)",
            "parameters": [_LIMIT], "responses": {"200": response(ref("Activity"))}}},
        "/admin/keys": {
            "get": {"operationId": "adminListKeys", "security": ADMIN,
                    "responses": {"200": response(ref("AdminKeyList"))}},
            "post": {"operationId": "adminCreateKey", "security": ADMIN,
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": ref("AdminKeyCreate")}}},
                     "responses": {"201": response(key)}}},
        "/admin/keys/{key_id}": {
            "get": {"operationId": "adminGetKey", "security": ADMIN, "parameters": [_KEY_ID],
                    "responses": {"200": response(key)}},
            "patch": {"operationId": "adminUpdateKey", "security": ADMIN,
                      "parameters": [_KEY_ID],
                      "requestBody": {"content": {
                          "application/json": {"schema": ref("AdminKeyUpdate")}}},
                      "responses": {"200": response(key)}},
            "delete": {"operationId": "adminRevokeKey", "security": ADMIN,
                       "parameters": [_KEY_ID], "responses": {"200": response(key)}}},
        "/admin/keys/{key_id}/revoke": {"post": {
            "operationId": "adminRevokeKeyByPost", "security": ADMIN, "parameters": [_KEY_ID],
            "responses": {"200": response(key)}}},
        "/admin/keys/{key_id}/rotate": {"post": {
            "operationId": "adminRotateKey", "security": ADMIN, "parameters": [_KEY_ID],
            "responses": {"200": response(key)}}},
        "/admin/keys/{key_id}/rotate-webhook-secret": {"post": {
            "operationId": "adminRotateWebhookSecret", "security": ADMIN,
            "parameters": [_KEY_ID],
            "requestBody": {"content": {
                "application/json": {"schema": ref("WebhookSecretRotation")}}},
            "responses": {"200": response(key)}}},
        "/admin/usage": {"get": {
            "operationId": "adminUsage", "security": ADMIN,
            "parameters": [*_USAGE_QUERY, _query("key", "one key's id")],
            "responses": {"200": _USAGE_OK}}},
        **console_paths(ADMIN, _LIMIT),
        "/images/{name}": {"get": {
            "operationId": "getImage", "security": PUBLIC,
            "summary": "An image behind a signed link (response_format=url)",
            "parameters": [_path("name", "the image's name"),
                           _query("expires", "the link's expiry, Unix seconds"),
                           _query("sig", "the link's signature")],
            "responses": {"200": {"description": "the image", "content": {
                mime: {"schema": {"type": "string", "format": "binary"}}
                for mime in ("image/png", "image/jpeg", "image/webp")}}}}},
        "/callbacks/{provider}/{token}": {"post": {
            "operationId": "providerCallback", "security": PUBLIC,
            "summary": "A host saying its job is done (a wake-up call; the body is not "
                       "trusted)",
            "parameters": [_path("provider", "provider name"),
                           _path("token", "the job's callback token")],
            "responses": {"200": response(ref("CallbackAck"))}}},
        "/healthz": {"get": {"operationId": "healthz", "security": PUBLIC,
                             "responses": {"200": response(ref("Health"))}}},
        "/readyz": {"get": {"operationId": "readyz", "security": PUBLIC,
                            "responses": {"200": response(ref("Health")),
                                          "503": response(ref("Health"), "not ready")}}},
        "/openapi.json": {"get": {"operationId": "openapi", "security": PUBLIC,
                                  "summary": "This document",
                                  "responses": {"200": response({"type": "object"})}}},
    }
