"""The `vertex` protocol: the Gemini image body on Vertex AI's publisher-model path.

Body and reply handling are gemini.py's; this module only chooses the URL (project and
location, or express mode without a project), the auth header, and Vertex's output format.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from proxy.catalog import Route
from proxy.domain import ImageRequest
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import gemini
from proxy.providers.base import Adapter, Flow, UpstreamCall

# Formats Vertex's imageOutputOptions.mimeType is asked for; others come back as PNG and are
# converted centrally. Route data (`native_output_formats`) because WebP support is unconfirmed.
NATIVE_OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg")


def url(route: Route) -> str:
    """`{base}/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`, or
    without the project part in express mode (an API key and no `project` option)."""
    model = quote(route.upstream_model, safe="")
    project = gemini.option(route, "project", None)
    prefix = route.provider.base_url
    if project:
        location = gemini.option(route, "location", "global")
        prefix += f"/projects/{quote(str(project), safe='')}/locations/{quote(location, safe='')}"
    return f"{prefix}/publishers/google/models/{model}:generateContent"


def headers(route: Route) -> dict[str, str]:
    """Bearer token (OAuth access token, from key_env or a token command) or express-mode key."""
    key = gemini.api_key(route)
    default = "bearer" if "token_command" in route.provider.options else "api_key"
    style = gemini.option(route, "auth", default)
    if style == "api_key":
        return {"x-goog-api-key": key}
    if style != "bearer":
        raise UpstreamError(Failure(Kind.AUTH, f"provider {route.provider.name!r}: auth must "
                                               f"be 'bearer' or 'api_key'"))
    if not gemini.option(route, "project", None):
        raise UpstreamError(Failure(Kind.AUTH, f"provider {route.provider.name!r}: bearer auth "
                                               f"needs the 'project' option"))
    return {"authorization": f"Bearer {key}"}


def output_options(request: ImageRequest, route: Route) -> dict[str, Any]:
    """imageOutputOptions for a non-PNG format Vertex can produce itself; else nothing."""
    fmt = request.output_format
    if fmt == "png" or fmt not in gemini.option(route, "native_output_formats",
                                                NATIVE_OUTPUT_FORMATS):
        return {}
    options: dict[str, Any] = {"mimeType": f"image/{fmt}"}
    if fmt == "jpeg" and request.output_compression is not None:
        # OpenAI's output_compression is a quality (100 = best), as is compressionQuality.
        options["compressionQuality"] = request.output_compression
    return {"imageOutputOptions": options}


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    return UpstreamCall("POST", url(route), headers=headers(route),
                        json=gemini.body(request, route, output_options(request, route)))


def flow(request: ImageRequest, route: Route) -> Flow:
    return (yield from gemini.respond(build(request, route)))


ADAPTER = Adapter("vertex", flow, images_per_call=1)
