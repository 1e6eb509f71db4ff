"""GET /v1/models and /v1/models/{id}, from the live catalog."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api.auth import authenticate, may_use
from proxy.api.errors import ApiError
from proxy.catalog import Model
from proxy.services import services


def model_object(model: Model, name: str | None = None) -> dict[str, Any]:
    return {"id": name or model.name, "object": "model", "created": model.created,
            "owned_by": model.owned_by, "shutdown_date": model.shutdown_date}


async def list_models(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    data = [model_object(model) for model in svc.catalog.models if may_use(key, model)]
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")


async def get_model(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    name = request.path_params["model"]
    model = svc.catalog.resolve(name)
    if model is None or not may_use(key, model):
        raise ApiError(404, f"The model '{name}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return Response(orjson.dumps(model_object(model, name)), media_type="application/json")
