"""What the chat and Gemini surfaces share: a request translated into the pipeline's terms, run
through the same admission, billing, idempotency and ledger as the images API, and answered
whole or as a stream in the surface's own shape."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.api import idempotent
from proxy.api.errors import ApiError, bad_request
from proxy.api.metering import Charged, Renderer, charged, respond
from proxy.api.openai_schema import MAX_IMAGES, MAX_PROMPT, default_tier
from proxy.api.render import Origin
from proxy.api.sse import EventStream, Relay, Style
from proxy.billing.keys import KeyRecord
from proxy.catalog import Model
from proxy.domain import Geometry, ImageRequest, InputImage, PartialImage
from proxy.services import Services

IGNORED_HEADER = "x-switchyard-ignored"


@dataclass(frozen=True, slots=True)
class Translated:
    """A surface's request in the pipeline's terms, and what the answer must remember."""

    model: Model
    asked: ImageRequest
    ignored: tuple[str, ...] = ()  # fields taken but not applied: named in IGNORED_HEADER
    stream: bool = False
    with_text: bool = True  # whether the answer carries the words a host sent


def _as_is(done: Charged) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Surface:
    """How one client format is answered."""

    render: Renderer
    style: Style
    # The pipeline's parameter names (`size`, `n`, `image`…) -> this surface's, for errors.
    params: Mapping[str, str] = field(default_factory=dict)
    finish: Callable[[Charged], None] = _as_is  # last touches to the body, once billed
    # A host's partial image as this surface's event; None: the surface relays none.
    partial: Callable[[ImageRequest, PartialImage], bytes] | None = None


async def answer(request: Request, svc: Services, key: KeyRecord, ask: Translated,
                 surface: Surface) -> Response:
    """`ask` served and billed, answered in the surface's shape; its errors name the
    surface's parameters."""
    try:
        return await _answer(request, svc, key, ask, surface)
    except ApiError as exc:
        raise renamed(exc, surface.params) from None


async def _answer(request: Request, svc: Services, key: KeyRecord, ask: Translated,
                  surface: Surface) -> Response:
    origin = Origin.of(request)
    extra = {IGNORED_HEADER: ", ".join(ask.ignored)} if ask.ignored else {}
    idem_key = request.headers.get(idempotent.HEADER)
    if ask.stream:
        if idem_key is not None:
            raise bad_request(idempotent.HEADER, "Idempotency-Key is not taken with a streamed "
                                                 "answer; send the request without streaming",
                              code="unsupported_value")
        running: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        asked, relay = ask.asked, None
        if surface.partial is not None and asked.partial_images:
            relay = Relay(functools.partial(surface.partial, asked))
            asked = replace(asked, partials=relay)
        work = asyncio.create_task(charged(origin, svc, key, ask.model, asked,
                                           render=surface.render, running=running))
        either: set[asyncio.Future[Any]] = {work, running}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        if work.done():
            work.result()  # refused before the run (a bad route, a limit): a plain error
        admitted = running.result() if running.done() else {}  # a limited key's figures
        return EventStream(work, surface.style, {**admitted, **extra}, origin.request_id, relay)

    async def produce() -> Response:
        done = await charged(origin, svc, key, ask.model, ask.asked, idem_key,
                             render=surface.render)
        surface.finish(done)
        done.headers.update(extra)
        return respond(done)

    if idem_key is None:
        return await produce()
    return await idempotent.once(request, svc, key, idem_key, produce)


def served_by(done: Charged) -> dict[str, str]:
    """The x-switchyard-* headers of an answer as fields (`billed_usd`…): a stream's last
    event carries them, its headers having left before the run ended."""
    prefix = "x-switchyard-"
    return {name.removeprefix(prefix).replace("-", "_"): value
            for name, value in done.headers.items() if name.startswith(prefix)}


def parameters(ratio: str, size: str, references: str, n: str = "n") -> dict[str, str]:
    """The pipeline's parameter names -> a surface's fields, for `renamed`. `size` is blamed
    when the shape was the model's default: then only the size field can have been asked."""
    return {"size": size, "aspect_ratio": ratio, "resolution": size, "n": n,
            "image": references, "image_urls": references, "prompt": references}


def renamed(error: ApiError, names: Mapping[str, str]) -> ApiError:
    """`error` with its parameter called by the surface's name for it (in the message too)."""
    name = names.get(error.param or "")
    if name is None:
        return error
    return ApiError(error.status, error.message.replace(f"'{error.param}'", f"'{name}'"),
                    type=error.type, param=name, code=error.code, headers=error.headers)


def shape(model: Model, ratio: str | None, tier: str | None) -> Geometry:
    """The asked geometry. Without a ratio it is the model's default, marked so: an edit then
    keeps its input's shape where the host can."""
    ratios = model.aspect_ratios()
    tier = tier or default_tier(model.tiers())
    if ratio is not None:
        return Geometry(ratio, tier, None, "aspect_ratio")
    return Geometry("1:1" if "1:1" in ratios else ratios[0], tier, None, "default")


def prompt(pieces: Sequence[str], param: str) -> str:
    """The texts of a conversation as one prompt, or a 400 naming `param`."""
    text = "\n".join(piece.strip() for piece in pieces if piece.strip())
    if not text:
        raise bad_request(param, f"'{param}' holds no text to draw from",
                          code="missing_required_parameter")
    if len(text) > MAX_PROMPT:
        raise bad_request(param, f"the prompt in '{param}' is {len(text)} characters; the "
                                 f"maximum is {MAX_PROMPT}", code="string_above_max_length")
    return text


def references(images: Sequence[InputImage], param: str) -> tuple[InputImage, ...]:
    if len(images) > MAX_IMAGES:
        raise bad_request(param, f"'{param}' holds {len(images)} images; at most {MAX_IMAGES} "
                                 "can be referenced", code="too_many_images")
    return tuple(images)
