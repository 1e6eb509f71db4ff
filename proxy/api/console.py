"""GET /console: the operators' console, static files shipped in the package (proxy/console/).

No build step and nothing from another origin: hand-written HTML, CSS and JavaScript modules,
read once when the app is built. The page holds no secret and no data; it asks for a key and
sends it, in the Authorization header, to the admin and usage APIs of this same origin. The
Content-Security-Policy lets it run only its own files: no inline script or style, no other
origin to talk to, no framing, and no form that submits anywhere (a key typed into the login
form with scripts off goes nowhere, not into a URL).
"""

from __future__ import annotations

import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from proxy.api.context import Endpoint
from proxy.api.errors import ApiError

PATH = "/console"
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": POLICY, "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer", "x-frame-options": "DENY",
           "cross-origin-opener-policy": "same-origin",
           "cross-origin-resource-policy": "same-origin", "cache-control": "no-cache"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\.(html|js|css|svg)")


def files() -> dict[str, bytes]:
    """name -> bytes of every static file the package ships."""
    static = resources.files("proxy.console").joinpath("static")
    return {item.name: item.read_bytes() for item in static.iterdir()
            if _NAME.fullmatch(item.name)}


def endpoints() -> tuple[Endpoint, Endpoint]:
    """The page (GET /console) and its files (GET /console/{name}), read once."""
    shipped = files()

    def answer(name: str) -> Response:
        body = shipped.get(name)
        if body is None:
            raise ApiError(404, f"no console file {name!r}", param="name", code="not_found")
        return Response(body, media_type=TYPES[name[name.rindex("."):]], headers=HEADERS)

    async def page(request: Request) -> Response:
        return answer("index.html")

    async def static(request: Request) -> Response:
        return answer(str(request.path_params["name"]))

    return page, static
