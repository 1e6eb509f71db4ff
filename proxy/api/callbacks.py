"""POST /callbacks/{provider}/{token}: a host saying its job is done.

Only a wake-up call for the flow waiting on that token: the flow fetches the result from the
host's API itself, so nothing in the body is trusted. Where the host signs its callbacks and
the provider has a `webhook_secret` option, a bad or stale signature is refused (401).
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api.errors import ApiError
from proxy.providers import ADAPTERS
from proxy.services import services


async def receive(request: Request) -> Response:
    svc = services(request)
    name, token = request.path_params["provider"], request.path_params["token"]
    provider = next((p for p in svc.catalog.providers if p.name == name), None)
    if provider is None:
        raise ApiError(404, "no such callback", code="not_found")
    body = await request.body()
    verify = ADAPTERS[provider.protocol].verify_callback
    secret = provider.options.get("webhook_secret")
    if verify is not None and secret and not verify(dict(request.headers), body, str(secret),
                                                    time.time()):
        raise ApiError(401, "callback signature missing, wrong or stale",
                       code="invalid_signature")
    # A token for another provider's job is treated as unknown.
    known = svc.router.callbacks.provider_of(token) == name and svc.router.callbacks.wake(token)
    return Response(orjson.dumps({"received": True, "waiting": known}), 200,
                    media_type="application/json")
