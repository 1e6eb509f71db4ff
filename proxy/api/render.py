"""An ImagesResponse from what was served: the body (b64_json or signed links), the headers
that say who served it and what it cost, and the request's metrics."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from proxy import metrics
from proxy.catalog import Model
from proxy.domain import Attempt, ImageRequest, Served
from proxy.media import EXTENSIONS
from proxy.services import Services

# The spec's enums for these response fields; other values go in headers, not the body.
_SPEC_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
_SPEC_QUALITIES = frozenset({"low", "medium", "high"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from: its id (the ledger's key), and the base of image links: a
    URL, or the request it is read from once a link is made (building it costs more than
    planning the request's routes, and a b64_json answer never needs it)."""

    request_id: str
    base: str | Request

    @classmethod
    def of(cls, request: Request) -> Origin:
        return cls(request.scope["state"]["request_id"], request)

    @property
    def base_url(self) -> str:
        if isinstance(self.base, str):
            return self.base
        return str(self.base.base_url).rstrip("/")


async def images_body(origin: Origin, svc: Services, asked: ImageRequest,
                      served: Served) -> dict[str, Any]:
    data = []
    for image in served.result.images:
        if asked.response_format == "url":
            # A link is the one case where base64 must be decoded (proxy.verify did it,
            # strictly, inside the attempt).
            raw = image.data if image.data is not None else base64.b64decode(image.b64)
            name = await svc.media.put(raw, image.mime)
            base = svc.config.public_base_url or origin.base_url
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


def image_headers(asked: ImageRequest, served: Served) -> dict[str, str]:
    headers = {
        "x-switchyard-provider": served.provider,
        "x-switchyard-route": served.route_id,
        "x-switchyard-upstream-model": served.upstream_model,
        "x-switchyard-cost-usd": f"{served.cost_usd:.6f}",
        "x-switchyard-strategy": served.strategy,
        "x-switchyard-quote-usd": f"{served.quote_usd:.6f}",
        "x-switchyard-resolution": asked.geometry.tier,
        "x-switchyard-aspect-ratio": asked.geometry.aspect_ratio,
        **attempt_headers(served.attempts),
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


def attempt_headers(attempts: tuple[Attempt, ...]) -> dict[str, str]:
    log = ", ".join(f"{a.provider}={a.failure or 'ok'}" for a in attempts)
    return {"x-switchyard-attempts": str(len(attempts)), "x-switchyard-attempt-log": log}


def observe(model: Model, asked: ImageRequest, served: Served, seconds: float) -> None:
    """A served request's metrics (money is counted where it is billed, in metering)."""
    tier, images = asked.geometry.tier, len(served.result.images)
    metrics.REQUESTS.labels(model.name, served.provider, "success").inc()
    metrics.IMAGES.labels(model.name, served.provider, tier).inc(images)
    metrics.REQUEST_SECONDS.labels(model.name, "success").observe(seconds)
    metrics.OVERHEAD_SECONDS.labels(model.name).observe(max(0.0, seconds - served.upstream_s))
    winner = next((a for a in served.attempts if a.failure is None), None)
    if winner is not None:
        metrics.SECONDS_PER_IMAGE.labels(model.name, served.provider, tier).observe(
            winner.seconds / images)
    if any(a.failure not in (None, "hedged") for a in served.attempts):
        metrics.FAILOVERS.labels(model.name).inc()
