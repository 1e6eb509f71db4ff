"""The `together` protocol: Together AI's synchronous /images/generations (width/height).

Together serves the Nano Banana family under its own slugs (routes/ upstream_model). It takes
a pixel size rather than OpenAI's `size`, and the Google models only a fixed list of them
(route option `sizes`, by tier); reference images go in `reference_images`.
"""

from __future__ import annotations

from typing import Any

from proxy.catalog import Route
from proxy.domain import ImageRequest
from proxy.failures import Kind
from proxy.providers import images_api as api
from proxy.providers.base import Adapter, Flow, UpstreamCall

# Together's docs allow n of 1..4 per call; more runs as parallel calls.
IMAGES_PER_CALL = 4
# Together's error codes are not documented: these are what we know or expect; routes can
# add or override them with the `error_kinds` option.
ERROR_KINDS: dict[str, Kind] = {
    # A partner model the organisation has not enabled data sharing for: our account.
    "third_party_data_sharing_blocked": Kind.AUTH,
    "invalid_api_key": Kind.AUTH,
    "content_policy_violation": Kind.CONTENT_BLOCKED,
    "*nsfw*": Kind.CONTENT_BLOCKED,
    "*safety*": Kind.CONTENT_BLOCKED,
    "model_not_available": Kind.UPSTREAM_BROKEN,
    "credit_limit": Kind.AUTH,
}


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    """The JSON body Together's images API takes. Quality, background and compression have no
    Together field: the route's capabilities say which backgrounds and formats it serves."""
    api.reject_mask(request, route)
    width, height = api.choose_size(request, route)
    body: dict[str, Any] = {
        "model": route.upstream_model, "prompt": request.prompt, "n": request.n,
        "width": width, "height": height,
        # Base64 spares a download; `url` works too (then the result is fetched).
        "response_format": api.option(route, "response_format", "base64"),
        "output_format": request.output_format,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.images:
        # The Google models take only reference_images (not image_url).
        field = str(api.option(route, "reference_field", "reference_images"))
        body[field] = [api.data_url(image) for image in request.images]
    return UpstreamCall("POST", api.endpoint(route, "generations_path", "/images/generations"),
                        api.auth_headers(route), json={**body, **api.extra_body(route)})


def flow(request: ImageRequest, route: Route) -> Flow:
    # A generator itself, so even building the call runs inside the driver.
    kinds = api.error_kinds(route, ERROR_KINDS)
    return (yield from api.exchange(build(request, route), kinds, request.output_format))


ADAPTER = Adapter("together", flow, images_per_call=IMAGES_PER_CALL)
