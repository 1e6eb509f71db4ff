"""Tenant keys on every API call (Bearer; Google's header or ?key= on /v1beta), and model
names (with strategy suffixes) to models."""

from __future__ import annotations

from starlette.requests import Request

from proxy.api.errors import ApiError
from proxy.billing.keys import KeyRecord
from proxy.catalog import STRATEGIES, Catalog, Model
from proxy.services import Services


async def authenticate(request: Request, services: Services) -> KeyRecord:
    """The tenant key's record, or a 401 as OpenAI sends it (never echoing the key)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: "
                            "Bearer <key>' (create one: switchyard keys create NAME)",
                       code="missing_api_key")
    return await _record(request, services, token, ApiError(
        401, "Incorrect API key provided, or the key was revoked.", code="invalid_api_key"))


async def authenticate_google(request: Request, services: Services) -> KeyRecord:
    """The tenant key as Google's clients send it (the Gemini surface only): the
    x-goog-api-key header, or the `key` query parameter; refused with Google's statuses."""
    token = (request.headers.get("x-goog-api-key") or request.query_params.get("key")
             or "").strip()
    if not token:
        raise ApiError(403, "Method doesn't allow unregistered callers. Send the tenant key "
                            "as the x-goog-api-key header or the key query parameter (create "
                            "one: switchyard keys create NAME)", code="missing_api_key")
    return await _record(request, services, token, ApiError(
        400, "API key not valid. Please pass a valid API key.", code="api_key_invalid"))


async def _record(request: Request, services: Services, token: str,
                  invalid: ApiError) -> KeyRecord:
    record = await services.keys.find(token)
    if record is None:
        raise invalid
    request.scope["state"]["key_id"] = record.id
    return record


def resolve_model(catalog: Catalog, name: str,
                  key: KeyRecord | None = None) -> tuple[Model, str | None]:
    """The model and the strategy its suffix asks for ('demo-image:fastest'), or a 404 (also
    for a model the key may not use: OpenAI does not tell the two apart)."""
    model, strategy = catalog.resolve(name), None
    if model is None:
        base, sep, suffix = name.rpartition(":")
        if sep and suffix in STRATEGIES:
            model, strategy = catalog.resolve(base), suffix
    if model is not None and (key is None or may_use(key, model)):
        return model, strategy
    raise ApiError(404, f"The model '{name}' does not exist or you do not have access to "
                        "it. GET /v1/models lists the models served here.",
                   param="model", code="model_not_found")


def may_use(key: KeyRecord, model: Model) -> bool:
    allowed = key.limits.allowed_models
    return allowed is None or model.name in allowed
