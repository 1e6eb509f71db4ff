"""The `together` protocol: Together AI's synchronous /images/generations (width/height).

Together serves the Nano Banana family under its own slugs (routes/ upstream_model). It takes
a pixel size rather than OpenAI's `size`, and the Google models only a fixed list of them
(route option `sizes`, by tier); reference images go in `reference_images`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import images_api as api
from proxy.providers import sizes
from proxy.providers.base import Adapter, Flow, UpstreamCall, UpstreamReply, check

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
# What a status means at Together when no error code says more (its error-code docs and images
# docs): 402 is our account's spending limit, 404 a model slug or path that does not exist
# (route data), 422 the safety checker. Read generically, each would be the client's bad request.
STATUS_KINDS: dict[int, Kind] = {402: Kind.AUTH, 404: Kind.UPSTREAM_BROKEN,
                                 422: Kind.CONTENT_BLOCKED}
_STATUS_TEXT = {402: "Together account is out of credit or over its spending limit",
                404: "Together has no such model or endpoint"}
# Together's output_format is jpeg or png (its OpenAPI enum); webp is asked as png and converted
# by Switchyard.
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "webp": "png"}


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    """The JSON body Together's images API takes. Quality, background and compression have no
    Together field: the route's capabilities say which backgrounds it serves, and a format
    Together cannot make is asked as PNG and converted by Switchyard."""
    api.reject_mask(request, route)
    width, height = sizes.choose_size(request, route)
    body: dict[str, Any] = {
        "model": route.upstream_model, "prompt": request.prompt, "n": request.n,
        "width": width, "height": height,
        # Base64 spares a download; `url` works too (then the result is fetched).
        "response_format": api.option(route, "response_format", "base64"),
        "output_format": OUTPUT_FORMATS.get(request.output_format, "png"),
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.images:
        body.update(references(request, route))
    return UpstreamCall("POST", api.endpoint(route, "generations_path", "/images/generations"),
                        api.auth_headers(route), json={**body, **api.extra_body(route)})


def references(request: ImageRequest, route: Route) -> dict[str, Any]:
    """Reference images: a list in `reference_images` (the only field the Google models take),
    or one string in `image_url` for the models whose route names that field."""
    field = str(api.option(route, "reference_field", "reference_images"))
    urls = [api.data_url(image) for image in request.images]
    if field != "image_url":
        return {field: urls}
    if len(urls) > 1:
        raise UpstreamError(Failure(Kind.BAD_REQUEST, f"route {route.id} takes one reference "
                                                      f"image, not {len(urls)}"))
    return {field: urls[0]}


def classify(reply: UpstreamReply, kinds: Mapping[str, Kind]) -> Failure | None:
    """The shared reading of a reply, except where it fell back to 'bad request' for a status
    Together gives its own meaning (STATUS_KINDS)."""
    failure = api.classify(reply, kinds)
    kind = STATUS_KINDS.get(reply.status)
    if failure is None or kind is None or failure.kind is not Kind.BAD_REQUEST:
        return failure
    if kind is Kind.CONTENT_BLOCKED:
        # The shared message already holds the upstream's cleaned words: they tell the client
        # what was refused.
        text = failure.message.replace("upstream rejected the request",
                                       "upstream refused the content", 1)
    else:
        text = f"{_STATUS_TEXT[reply.status]} (HTTP {reply.status})"
    return Failure(kind, text, None, reply.status)


def flow(request: ImageRequest, route: Route) -> Flow:
    # A generator itself, so even building the call runs inside the driver.
    kinds = api.error_kinds(route, ERROR_KINDS)
    call = build(request, route)
    steps = api.exchange(call, kinds, str(call.json["output_format"]))
    return (yield from _classified(steps, kinds))


def _classified(steps: Flow, kinds: Mapping[str, Kind]) -> Flow:
    """Run the shared exchange, checking the submit reply with Together's classify first:
    api.exchange has no hook for a protocol's own classify."""
    reply: UpstreamReply | None = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            result: ImageResult = done.value
            return result
        reply = yield step
        if isinstance(step, UpstreamCall) and step.kind == "submit":
            check(reply, lambda r: classify(r, kinds))


ADAPTER = Adapter("together", flow, images_per_call=IMAGES_PER_CALL)
