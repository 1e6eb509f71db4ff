"""POST /v1/images/generations and /v1/images/edits, and the signed image links they hand out."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy import metrics
from proxy.api import uploads
from proxy.api.auth import authenticate, resolve_model
from proxy.api.errors import ApiError, bad_request, from_failure
from proxy.api.openai_schema import Body, model_name, parse
from proxy.api.policy import HEADER, request_policy
from proxy.catalog import Model
from proxy.domain import Attempt, ImageRequest, InputImage, Served
from proxy.media import EXTENSIONS, MIME_TYPES
from proxy.routing.router import NoRoute, RoutesFailed
from proxy.services import Services, services

# The spec's enums for these response fields; other values go in headers, not the body.
_SPEC_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
_SPEC_QUALITIES = frozenset({"low", "medium", "high"})


async def generations(request: Request) -> Response:
    svc = services(request)
    await authenticate(request, svc)
    data = await _json_object(request)
    model, suffix = resolve_model(svc.catalog, model_name(data))
    policy = request_policy(data.get("route"), request.headers.get(HEADER), suffix)
    image_request = parse("generate", Body(data, form=False), model, policy)
    return await _serve(request, svc, model, image_request)


async def edits(request: Request) -> Response:
    svc = services(request)
    await authenticate(request, svc)
    content_type = request.headers.get("content-type", "")
    images: tuple[InputImage, ...]
    if content_type.startswith("multipart/form-data"):
        fields, files, mask = await uploads.read_form(request)
        body, images = Body(fields, form=True), tuple(files)
    elif content_type.startswith("application/json"):
        data = await _json_object(request)
        images = uploads.json_images(data.get("images")) if "images" in data else ()
        mask = uploads.json_image(data["mask"], "mask") if data.get("mask") else None
        body = Body({k: v for k, v in data.items() if k not in ("images", "mask")}, form=False)
    else:
        raise ApiError(415, "send multipart/form-data (as the OpenAI SDK does) or JSON",
                       code="unsupported_media_type")
    if not images:
        raise bad_request("image", "'image' is required: upload at least one image",
                          code="missing_required_parameter")
    model, suffix = resolve_model(svc.catalog, model_name(body.data))
    policy = request_policy(body.data.get("route"), request.headers.get(HEADER), suffix)
    image_request = parse("edit", body, model, policy, images, mask)
    return await _serve(request, svc, model, image_request)


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(None, "the request body is not valid JSON", code="invalid_json") \
            from None
    if not isinstance(data, dict):
        raise bad_request(None, "the request body must be a JSON object", code="invalid_json")
    return data


async def _serve(request: Request, svc: Services, model: Model,
                 image_request: ImageRequest) -> Response:
    started = time.monotonic()
    try:
        served = await svc.router.serve(model, image_request)
    except NoRoute as exc:
        raise bad_request(exc.param, exc.message, code="unsupported_value") from None
    except RoutesFailed as exc:
        metrics.REQUESTS.labels(model.name, "none", exc.failure.kind.value).inc()
        error = from_failure(exc.failure, len(exc.attempts))
        error.headers.update(_attempt_headers(exc.attempts))
        raise error from None
    body = await _images_body(request, svc, image_request, served)
    _observe(model, image_request, served, time.monotonic() - started)
    return Response(orjson.dumps(body), 200, _headers(image_request, served), "application/json")


async def _images_body(request: Request, svc: Services, asked: ImageRequest,
                       served: Served) -> dict[str, Any]:
    data = []
    for image in served.result.images:
        if asked.response_format == "url":
            # Converting to a link is the one case where base64 must be decoded.
            name = await svc.media.put(base64.b64decode(image.b64), image.mime)
            base = svc.config.public_base_url or str(request.base_url).rstrip("/")
            item: dict[str, str] = {"url": svc.media.link(base, name)}
        else:
            item = {"b64_json": image.b64}
        if image.revised_prompt:
            item["revised_prompt"] = image.revised_prompt
        data.append(item)
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    mime = served.result.images[0].mime
    body["output_format"] = EXTENSIONS.get(mime, asked.output_format)
    if served.result.size in _SPEC_SIZES:
        body["size"] = served.result.size
    if asked.quality in _SPEC_QUALITIES:
        body["quality"] = asked.quality
    if asked.background in ("opaque", "transparent"):
        body["background"] = asked.background
    if (usage := served.result.usage) is not None:
        body["usage"] = {
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "input_tokens_details": {"text_tokens": usage.input_tokens - usage.input_image_tokens,
                                     "image_tokens": usage.input_image_tokens},
        }
    return body


def _headers(asked: ImageRequest, served: Served) -> dict[str, str]:
    headers = {
        "x-switchyard-provider": served.provider,
        "x-switchyard-route": served.route_id,
        "x-switchyard-upstream-model": served.upstream_model,
        "x-switchyard-cost-usd": f"{served.cost_usd:.6f}",
        "x-switchyard-strategy": served.strategy,
        "x-switchyard-quote-usd": f"{served.quote_usd:.6f}",
        "x-switchyard-resolution": asked.geometry.tier,
        "x-switchyard-aspect-ratio": asked.geometry.aspect_ratio,
        **_attempt_headers(served.attempts),
    }
    if hedged := served.hedge_cost_usd:
        headers["x-switchyard-hedge-cost-usd"] = f"{hedged:.6f}"
    if served.converted_from:
        headers["x-switchyard-converted"] = \
            f"{served.converted_from} -> {served.result.images[0].mime}"
    delivered = served.result.size
    if delivered:
        headers["x-switchyard-size"] = delivered
        if asked.geometry.exact_size and asked.geometry.exact_size != delivered:
            headers["x-switchyard-size-adjusted"] = \
                f"requested={asked.geometry.exact_size}; delivered={delivered}"
    return headers


def _attempt_headers(attempts: tuple[Attempt, ...]) -> dict[str, str]:
    log = ", ".join(f"{a.provider}={a.failure or 'ok'}" for a in attempts)
    return {"x-switchyard-attempts": str(len(attempts)), "x-switchyard-attempt-log": log}


def _observe(model: Model, asked: ImageRequest, served: Served, seconds: float) -> None:
    metrics.REQUESTS.labels(model.name, served.provider, "success").inc()
    metrics.IMAGES.labels(model.name, served.provider, asked.geometry.tier).inc(
        len(served.result.images))
    metrics.REQUEST_SECONDS.labels(model.name).observe(seconds)
    metrics.UPSTREAM_COST.labels(model.name, served.provider).inc(float(served.cost_usd))
    if len(served.attempts) > 1:
        metrics.FAILOVERS.labels(model.name).inc()


async def image_file(request: Request) -> Response:
    """GET /images/{name}?expires&sig: the signed link is the only way to read a stored image."""
    svc = services(request)
    name = request.path_params["name"]
    query = request.query_params
    if not svc.media.verify(name, query.get("expires", ""), query.get("sig", "")):
        raise ApiError(404, "no such image, or the link expired", code="not_found")
    data = await svc.media.read(name)
    if data is None:
        raise ApiError(404, "no such image, or the link expired", code="not_found")
    mime = MIME_TYPES.get(name.rpartition(".")[2], "application/octet-stream")
    return Response(data, 200, {"cache-control": "private, max-age=300"}, mime)
