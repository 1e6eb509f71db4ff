"""The `byteplus` protocol: BytePlus ModelArk (and Volcengine Ark) /images/generations.

Seedream's API is OpenAI-shaped but reports failures per image inside `data[]`: what
succeeded is delivered, and only when every image failed is the request a failure. Size
limits differ per model version, so they are route options (`arbitrary_sizes`, `sizes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from proxy import geometry
from proxy.catalog import Route
from proxy.domain import ImageRequest
from proxy.failures import Kind
from proxy.providers import images_api as api
from proxy.providers import sizes
from proxy.providers.base import Adapter, Flow, UpstreamCall

# Seedream's own `n` is "sequential" generation, where the model decides how many images the
# prompt calls for; n identical requests are served as n parallel one-image calls instead.
IMAGES_PER_CALL = 1
# Seedream's defaults when a route sets no size rules: 4.x takes any WxH of 921,600 to
# 16,777,216 pixels with a ratio up to 16 (4.5 raises the minimum; see the route options).
DEFAULT_RULES = sizes.SizeRules(multiple=1, max_ratio=16.0, min_pixels=921_600,
                              max_pixels=16_777_216)
# Codes from Ark's docs and client code; routes can add or override with `error_kinds`.
ERROR_KINDS: dict[str, Kind] = {
    "*SensitiveContentDetected*": Kind.CONTENT_BLOCKED,
    # Volcengine's ContentSecurityDetection refusals (InputTextRiskDetection, ...): also a 400.
    "*RiskDetection*": Kind.CONTENT_BLOCKED,
    "AuthenticationError": Kind.AUTH,
    "AccessDenied*": Kind.AUTH,
    "ServiceNotOpen": Kind.AUTH,
    "ModelNotOpen": Kind.AUTH,
    "AccountOverdue*": Kind.AUTH,
    "InvalidEndpoint*": Kind.UPSTREAM_BROKEN,
    "RateLimitExceeded*": Kind.RATE_LIMITED,
    "QuotaExceeded*": Kind.RATE_LIMITED,
    "ServerOverloaded*": Kind.OVERLOADED,
    "InternalServiceError*": Kind.UPSTREAM_BROKEN,
    "InvalidParameter*": Kind.BAD_REQUEST,
    "MissingParameter*": Kind.BAD_REQUEST,
}


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    """One Seedream call for one image. The watermark Ark adds by default is off unless the
    route says otherwise; `seed` only reaches models that take it (`accepts_seed`)."""
    api.reject_mask(request, route)
    width, height = sizes.choose_size(request, _seedream_sizes(route), default_rules=DEFAULT_RULES)
    body: dict[str, Any] = {
        "model": route.upstream_model, "prompt": request.prompt,
        "size": geometry.size_text(width, height),
        "sequential_image_generation": "disabled",
        "response_format": api.option(route, "response_format", "b64_json"),
        "watermark": bool(api.option(route, "watermark", False)),
    }
    if request.images:
        refs = [api.data_url(image) for image in request.images]
        body["image"] = refs[0] if len(refs) == 1 else refs
    if request.seed is not None and api.option(route, "accepts_seed", False):
        body["seed"] = request.seed
    if api.option(route, "accepts_output_format", False):
        body["output_format"] = request.output_format
    return UpstreamCall("POST", api.endpoint(route, "generations_path", "/images/generations"),
                        api.auth_headers(route), json={**body, **api.extra_body(route)})


def _seedream_sizes(route: Route) -> Route:
    """The route with its `arbitrary_sizes` completed from Seedream's limits. A 4.5 route that
    only raises `min_pixels` must keep Seedream's ratio of 16 and pixel cap, not inherit the
    generic rules (16-pixel multiples, ratio 3, no cap) that would bend valid sizes."""
    spec = api.option(route, "arbitrary_sizes")
    if not spec:
        return route
    rules = {**asdict(DEFAULT_RULES), **(spec if isinstance(spec, Mapping) else {})}
    return replace(route, options={**route.options, "arbitrary_sizes": rules})


def flow(request: ImageRequest, route: Route) -> Flow:
    # A generator itself, so even building the call runs inside the driver.
    kinds = api.error_kinds(route, ERROR_KINDS)
    # Seedream answers JPEG unless told otherwise; the image bytes have the last word.
    asked = request.output_format if api.option(route, "accepts_output_format") else "jpeg"
    return (yield from api.exchange(build(request, route), kinds, asked))


ADAPTER = Adapter("byteplus", flow, images_per_call=IMAGES_PER_CALL)
