"""The `gemini` protocol: Google's Gemini API generateContent, one image per call.

Body building and reply handling are shared with vertex.py (same body, other URL and auth).
"""

from __future__ import annotations

import base64
import contextlib
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from proxy import failures, geometry, imaging
from proxy.catalog import Route
from proxy.domain import Image, ImageRequest, ImageResult, InputImage, Usage, token_count
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.base import Adapter, Flow, UpstreamCall, UpstreamReply, check

# Google spells the 0.5K tier "512" in its SDK; the spelling is unconfirmed, so routes may
# override this map (option `image_sizes`); a tier missing from it sends no imageSize at all.
IMAGE_SIZES: Mapping[str, str] = {"0.5K": "512", "1K": "1K", "2K": "2K", "4K": "4K"}
RESPONSE_MODALITIES: tuple[str, ...] = ("IMAGE",)
# The tier that served a call, where it may differ from the one asked (Priority past its limits).
SERVED_TIER = "x-gemini-service-tier"
# Finish reasons that mean "the model would not draw this": the client's outcome, not ours.
REFUSED: frozenset[str] = frozenset({
    "SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
    "SPII", "RECITATION", "IMAGE_RECITATION", "NO_IMAGE",
})
AUTH_REASONS: frozenset[str] = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED",
                                          "ACCESS_TOKEN_EXPIRED", "CREDENTIALS_MISSING"})
# google.rpc status -> failure class, for errors that carry nothing more specific.
STATUSES: Mapping[str, tuple[Kind, str]] = {
    "UNAUTHENTICATED": (Kind.AUTH, "upstream rejected Switchyard's credentials"),
    "PERMISSION_DENIED": (Kind.AUTH, "upstream denied Switchyard's credentials this model"),
    "FAILED_PRECONDITION": (Kind.AUTH, "upstream account cannot use this model here "
                                       "(billing or region not enabled)"),
    "NOT_FOUND": (Kind.UPSTREAM_BROKEN, "upstream does not know this model id (retired?)"),
    "UNAVAILABLE": (Kind.OVERLOADED, "upstream model overloaded"),
    "DEADLINE_EXCEEDED": (Kind.TIMEOUT, "upstream timed out"),
    "INTERNAL": (Kind.UPSTREAM_BROKEN, "upstream internal error"),
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_URL = re.compile(r"https?://\S+")


def option(route: Route, name: str, default: Any) -> Any:
    """A route option, else the provider's, else the default: vendor facts stay in routes/."""
    return route.options.get(name, route.provider.options.get(name, default))


def api_key(route: Route) -> str:
    if route.provider.key is None:
        raise UpstreamError(Failure(Kind.AUTH, f"no credential configured for provider "
                                               f"{route.provider.name!r}"))
    return route.provider.key.reveal()


def body(request: ImageRequest, route: Route,
         image_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The GenerateContentRequest for one image; `image_extra` adds host-only imageConfig keys.
    What Gemini cannot express at all (a mask, transparency) is refused, never dropped."""
    if request.mask is not None:
        raise UpstreamError(Failure(Kind.BAD_REQUEST, "this route cannot take a mask; "
                                                      "describe the region in the prompt"))
    if request.background == "transparent":
        raise UpstreamError(Failure(Kind.BAD_REQUEST,
                                    "this route cannot make transparent backgrounds"))
    config: dict[str, Any] = {
        "responseModalities": list(option(route, "response_modalities", RESPONSE_MODALITIES)),
        "candidateCount": 1,
        "imageConfig": {**image_config(request, route), **(image_extra or {})},
    }
    if request.seed is not None:
        config["seed"] = request.seed
    payload: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [
            *(_image_part(image, route) for image in request.images),
            {"text": request.prompt}]}],
        "generationConfig": config,
    }
    if safety := option(route, "safety_settings", None):
        payload["safetySettings"] = list(safety)
    if tier := option(route, "service_tier", None):  # Gemini API's Flex or Priority lane
        payload["serviceTier"] = tier
    return payload


def image_config(request: ImageRequest, route: Route) -> dict[str, str]:
    """aspectRatio and imageSize. With reference images and no shape asked for, the ratio is
    left out so the model keeps the input's ratio (Google's documented default)."""
    shape = request.geometry
    config = {}
    if not (request.images and shape.source == "default"):
        config["aspectRatio"] = shape.aspect_ratio
    size = option(route, "image_sizes", IMAGE_SIZES).get(shape.tier)
    if size:
        config["imageSize"] = size
    return config


def _image_part(image: InputImage, route: Route) -> dict[str, Any]:
    if image.data is not None:
        return {"inlineData": {"mimeType": image.mime,
                               "data": base64.b64encode(image.data).decode("ascii")}}
    url = image.url or ""
    if option(route, "reference_urls", "file_data") != "file_data":
        raise UpstreamError(Failure(Kind.BAD_REQUEST,
                                    "this route cannot take reference images by URL"))
    # Google fetches https URLs itself (fileData, since 2026-01); it needs a mime type.
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or ""
    return {"fileData": {"mimeType": mime if mime.startswith("image/") else "image/jpeg",
                         "fileUri": url}}


def build(request: ImageRequest, route: Route) -> UpstreamCall:
    model = quote(route.upstream_model, safe="")
    return UpstreamCall("POST", f"{route.provider.base_url}/models/{model}:generateContent",
                        headers={"x-goog-api-key": api_key(route)}, json=body(request, route))


def respond(call: UpstreamCall, downgraded: Decimal | None = None) -> Flow:
    """Send one generateContent call and turn its reply into images or a failure.
    `downgraded`: what the answer costs, as a multiple of the route's price, if Google says
    it served the call at the standard tier (a Priority lane past its limits)."""
    reply = check((yield call), classify)
    result = parse(reply.json())
    if downgraded is not None and reply.headers.get(SERVED_TIER) == "standard":
        return replace(result, price_factor=downgraded)
    return result


def _downgraded(route: Route) -> Decimal | None:
    """On the Priority lane, options.standard_tier_factor: the standard tier's price as a
    multiple of the route's."""
    if option(route, "service_tier", None) != "priority":
        return None
    factor = option(route, "standard_tier_factor", None)
    return Decimal(str(factor)) if factor is not None else None


def parse(reply: Any) -> ImageResult:
    """Images from a 200 GenerateContentResponse, or the failure it carries instead."""
    if not isinstance(reply, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream reply was not an object"))
    images = tuple(_image(part["inlineData"]) for candidate in _candidates(reply)
                   for part in _parts(candidate) if _is_image(part))
    if not images:
        raise UpstreamError(no_image(reply))
    return ImageResult(images=images, size=_size(images[0].b64),
                       upstream_id=reply.get("responseId"),
                       usage=usage(reply.get("usageMetadata")), text=_text(reply) or None)


def _candidates(reply: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in reply.get("candidates") or () if isinstance(c, dict)]


def _parts(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts or () if isinstance(p, dict)]


def _is_image(part: Mapping[str, Any]) -> bool:
    data = part.get("inlineData")
    # Thought parts may hold interim drafts: only the final image is the answer.
    return (isinstance(data, dict) and not part.get("thought")
            and str(data.get("mimeType", "")).startswith("image/") and bool(data.get("data")))


def _image(data: Mapping[str, Any]) -> Image:
    b64 = str(data["data"])
    kind, _ = imaging.b64_header(b64)
    return Image(mime=f"image/{kind}" if kind else str(data["mimeType"]), b64=b64)


def _size(b64: str) -> str | None:
    _, found = imaging.b64_header(b64)
    return geometry.size_text(*found) if found else None


def no_image(reply: Mapping[str, Any]) -> Failure:
    """Why a 200 holds no image: a refusal (prompt or output) or a broken answer."""
    feedback = reply.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if block:
        return Failure(Kind.CONTENT_BLOCKED, f"the prompt was blocked ({block})", status=200)
    candidates = _candidates(reply)
    reason = str(candidates[0].get("finishReason") or "") if candidates else ""
    if reason in REFUSED:
        return Failure(Kind.CONTENT_BLOCKED, f"the model produced no image ({reason})",
                       status=200)
    text = _text(reply)
    if reason == "STOP" and text:
        # The model answered in words instead of drawing: almost always a refusal.
        return Failure(Kind.CONTENT_BLOCKED, "the model answered without an image: "
                       + _clean(text), status=200)
    return Failure(Kind.UPSTREAM_BROKEN, f"upstream returned no image ({reason or 'no reason'})",
                   status=200)


def _text(reply: Mapping[str, Any]) -> str:
    """The answer's words, its thoughts left out."""
    return " ".join(str(part.get("text", "")) for c in _candidates(reply) for part in _parts(c)
                    if not part.get("thought") and part.get("text")).strip()


def usage(meta: Any) -> Usage | None:
    """Token counts; thinking tokens are billed as output, so they count as output here."""
    if not isinstance(meta, dict):
        return None
    return Usage(
        input_tokens=token_count(meta.get("promptTokenCount")),
        output_tokens=token_count(meta.get("candidatesTokenCount"))
        + token_count(meta.get("thoughtsTokenCount")),
        input_image_tokens=_modality(meta.get("promptTokensDetails"), "IMAGE"),
        output_image_tokens=_modality(meta.get("candidatesTokensDetails"), "IMAGE"),
    )


def _modality(details: Any, modality: str) -> int:
    if not isinstance(details, list):
        return 0
    return token_count(sum(token_count(d.get("tokenCount")) for d in details
                           if isinstance(d, dict) and d.get("modality") == modality))


def classify(reply: UpstreamReply) -> Failure | None:
    """An error reply (google.rpc.Status body) as a failure class; None for a 200, whose
    refusals parse() finds while reading it (one decode of a multi-megabyte body, not two)."""
    if reply.status == 200:
        return None
    return rpc_failure(reply.status, _rpc_error(reply), reply.headers)


def rpc_failure(code: int, error: Mapping[str, Any], headers: httpx.Headers) -> Failure:
    """A google.rpc.Status (`error`) that came with HTTP status `code` as a failure class; the
    batch protocol reads its per-request errors with the same rules."""
    status = str(error.get("status", ""))
    details = [d for d in error.get("details") or () if isinstance(d, dict)]
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        return Failure(Kind.RATE_LIMITED, "upstream quota exhausted",
                       _retry_delay(details, headers), code)
    if any(d.get("reason") in AUTH_REASONS for d in details):
        return Failure(Kind.AUTH, "upstream rejected Switchyard's credentials", None, code)
    if status == "INVALID_ARGUMENT":
        message = _clean(str(error.get("message", "")))
        return Failure(Kind.BAD_REQUEST, f"upstream rejected the request: {message}", None,
                       code)
    if status in STATUSES:
        kind, message = STATUSES[status]
        return Failure(kind, message, failures.retry_after(headers), code)
    return failures.from_status(code, headers)


def _rpc_error(reply: UpstreamReply) -> Mapping[str, Any]:
    try:
        decoded = reply.json()
    except ValueError:
        return {}
    if isinstance(decoded, list) and decoded:  # Vertex sometimes wraps the error in a list
        decoded = decoded[0]
    error = decoded.get("error") if isinstance(decoded, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_delay(details: list[dict[str, Any]], headers: httpx.Headers) -> float | None:
    """RetryInfo.retryDelay ("53s", "1.5s"), else Retry-After; a daily quota is "not soon"."""
    for delay in (str(d.get("retryDelay")) for d in details if d.get("@type") == _RETRY_INFO):
        with contextlib.suppress(ValueError):
            return min(max(0.0, float(delay.removesuffix("s"))), failures.MAX_RETRY_AFTER_S)
    header = failures.retry_after(headers)
    if header is not None:
        return header
    daily = any("PerDay" in str(v.get("quotaId", "")) for d in details
                for v in d.get("violations") or () if isinstance(v, dict))
    return failures.MAX_RETRY_AFTER_S if daily else None


def _clean(text: str, limit: int = 300) -> str:
    """Upstream text made safe to show a client: no URLs, bounded length."""
    text = " ".join(_URL.sub("", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flow(request: ImageRequest, route: Route) -> Flow:
    return (yield from respond(build(request, route), _downgraded(route)))


ADAPTER = Adapter("gemini", flow, images_per_call=1)
