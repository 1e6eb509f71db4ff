"""POST /v1/images/generations and /v1/images/edits, and the signed image links they hand out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.api import idempotent, image_stream, inputs, jobs, surface, uploads
from proxy.api.auth import authenticate, resolve_model
from proxy.api.errors import ApiError, bad_request
from proxy.api.metering import charge
from proxy.api.openai_schema import Body, from_json, model_name, parse
from proxy.api.policy import HEADER, request_policy
from proxy.api.render import Origin
from proxy.billing.keys import KeyRecord
from proxy.domain import ImageRequest, InputImage
from proxy.services import Services, services


async def generations(request: Request) -> Response:
    return await _metered(request, _generation, "generations")


async def edits(request: Request) -> Response:
    return await _metered(request, _edit, "edits")


# (request, services, key, its JSON body if already read) -> what to serve, and how
Parser = Callable[[Request, Services, KeyRecord, dict[str, Any] | None],
                  Awaitable[surface.Translated]]


async def _metered(request: Request, parse_body: Parser, endpoint: str) -> Response:
    """Authenticate, then parse and charge; with an Idempotency-Key, at most once; with
    `Prefer: respond-async` or a `callback_url`, as a queued job; with `stream`, as events."""
    svc = services(request)
    key = await authenticate(request, svc)
    data = None
    if request.headers.get("content-type", "").startswith("application/json"):
        data = await _json_object(request)
        if jobs.wants_async(request, data):
            return await _queued(request, svc, key, endpoint, data)
    elif jobs.wants_async(request, None):
        raise bad_request(None, "asynchronous requests take JSON bodies (an edit's images as "
                                "`images: [{\"image_url\": ...}]`)", code="unsupported_value")
    idem_key = request.headers.get(idempotent.HEADER)

    async def produce() -> Response:
        ask = await parse_body(request, svc, key, data)
        if ask.stream:
            return await surface.answer(request, svc, key, ask, image_stream.SURFACE)
        return await charge(Origin.of(request), svc, key, ask.model, ask.asked, idem_key)

    if idem_key is None:
        return await produce()
    await request.body()  # cached now: the fingerprint and a multipart parse both read it
    return await idempotent.once(request, svc, key, idem_key, produce)


async def _queued(request: Request, svc: Services, key: KeyRecord, endpoint: str,
                  data: dict[str, Any]) -> Response:
    """Validate now (a bad request is a 400 now, not a failed job later), then queue. With an
    Idempotency-Key, once: a retry gets the job its first request queued."""
    if image_stream.taken(data, form=False)[1]:
        raise bad_request("stream", "an asynchronous request is answered by its job, not a "
                                    "stream; omit 'stream' or the async request",
                          code="unsupported_value")
    idem_key, once = request.headers.get(idempotent.HEADER), None
    if idem_key is not None:
        once = idempotent.creating(key, idem_key, f"{request.url.path} {jobs.PREFER}",
                                   await request.body())
        earlier = await idempotent.created_before(svc, once)
        if earlier is not None:
            return await jobs.replay(svc, key, earlier)
    hook = jobs.callback_url(svc, data.pop("callback_url", None))
    header = request.headers.get(HEADER)
    if header and isinstance(data.get("route", {}), dict):
        data["route"] = {"strategy": header, **data.get("route", {})}
    from_json(svc, key, endpoint, dict(data))
    return await jobs.accept(svc, key, endpoint, data, hook, once)


async def _generation(request: Request, svc: Services, key: KeyRecord,
                      data: dict[str, Any] | None) -> surface.Translated:
    return await _from_json(request, svc, key, "generations", data)


async def _from_json(request: Request, svc: Services, key: KeyRecord, endpoint: str,
                     data: dict[str, Any] | None) -> surface.Translated:
    rest, stream, partials = image_stream.taken(
        data if data is not None else await _json_object(request), form=False)
    model, asked = from_json(svc, key, endpoint, rest, request.headers.get(HEADER))
    return surface.Translated(model, _with_partials(asked, partials), stream=stream)


async def _edit(request: Request, svc: Services, key: KeyRecord,
                data: dict[str, Any] | None) -> surface.Translated:
    content_type = request.headers.get("content-type", "")
    images: tuple[InputImage, ...]
    if content_type.startswith("multipart/form-data"):
        form, files, mask = await uploads.read_form(request)
        fields, stream, partials = image_stream.taken(form, form=True)
        body, images = Body(fields, form=True), tuple(files)
    elif content_type.startswith("application/json"):
        return await _from_json(request, svc, key, "edits", data)
    else:
        raise ApiError(415, "send multipart/form-data (as the OpenAI SDK does) or JSON",
                       code="unsupported_media_type")
    if not images:
        raise bad_request("image", "'image' is required: upload at least one image",
                          code="missing_required_parameter")
    model, suffix = resolve_model(svc.catalog, model_name(body.data), key)
    policy = request_policy(body.data.get("route"), request.headers.get(HEADER), suffix)
    return surface.Translated(model, _with_partials(parse("edit", body, model, policy, images,
                                                          mask), partials), stream=stream)


def _with_partials(asked: ImageRequest, partials: int) -> ImageRequest:
    """`asked` with its partial image count, rebuilt only when a stream asks for some (its
    two dozen frozen fields cost a request more than the check)."""
    return asked if asked.partial_images == partials else replace(asked, partial_images=partials)


async def _json_object(request: Request) -> dict[str, Any]:
    return await inputs.json_object(request)


async def image_file(request: Request) -> Response:
    """GET /images/{name}?expires&sig: the signed link is the only way to read a stored image."""
    svc = services(request)
    name = inputs.path_param(request, "name")
    expires = inputs.query(request, "expires")
    if expires is not None and inputs.integer_text(expires) is None:
        raise bad_request("expires", "'expires' must be the link's expiry time in Unix "
                                     "seconds, as the link gave it")
    if not svc.media.verify(name, expires or "", inputs.query(request, "sig") or ""):
        raise ApiError(404, "no such image, or the link expired", code="not_found")
    stored = await svc.media.read(name)
    if stored is None:
        raise ApiError(404, "no such image, or the link expired", code="not_found")
    return Response(stored.data, 200, {"cache-control": "private, max-age=300"}, stored.mime)
