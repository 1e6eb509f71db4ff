"""GET /openapi.json: Switchyard's OpenAPI document, as openapi_build.py made it and the
package ships it. No key needed: it describes the API and serves nothing else."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from proxy.api.context import Endpoint


def endpoint() -> Endpoint:
    """The handler, with the document read once, when the app is built."""
    document = resources.files("proxy.api").joinpath("openapi.json").read_bytes()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    return openapi
