"""A fake Google image upstream: the Gemini API, or (vertex=True) Vertex AI generateContent.

It speaks the real wire format: paths and hosts, x-goog-api-key / bearer auth with Google's
error bodies, strict request validation (unknown imageConfig fields, ratios and sizes per
model), real PNG/JPEG images in `inlineData` parts, usageMetadata, and every error shape of
the reference (google.rpc.Status with RetryInfo / QuotaFailure / ErrorInfo details, 200s that
hold no image). Tests script it: `fake.then("rate_limited", "ok")` answers the next calls in
that order (then "ok"), `fake.delay_s` makes it slow, `fake.seen` records what it was sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson

from proxy import geometry, imaging
from proxy.catalog import Capabilities, Provider, Route
from proxy.config import Secret
from proxy.domain import ASPECT_RATIOS, Geometry, ImageRequest, ImageResult
from proxy.failures import Failure, UpstreamError
from proxy.providers import flows
from proxy.providers.base import Adapter
from proxy.upstream.credentials import Credentials

GEMINI_HOST = "generativelanguage.googleapis.com"
TEN = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
FOURTEEN = (*TEN, "1:4", "4:1", "1:8", "8:1")


@dataclass(frozen=True)
class Model:
    max_refs: int
    ratios: tuple[str, ...]
    # imageSize value -> (our tier, output image tokens); empty: the model takes no imageSize.
    sizes: dict[str, tuple[str, int]]
    fixed_tokens: int = 0


MODELS = {
    "gemini-2.5-flash-image": Model(3, TEN, {}, fixed_tokens=1290),
    "gemini-3-pro-image": Model(14, TEN, {"1K": ("1K", 1120), "2K": ("2K", 1120),
                                          "4K": ("4K", 2000)}),
    "gemini-3.1-flash-image": Model(14, FOURTEEN, {
        "512": ("0.5K", 747), "1K": ("1K", 1120), "2K": ("2K", 1680), "4K": ("4K", 2520)}),
    # Nano Banana 2 Lite: 1K only; Nano Banana 2.1: no 512 (a 400), 4K at 3780 tokens.
    "gemini-3.1-flash-lite-image": Model(14, FOURTEEN, {"1K": ("1K", 1120)}),
    "gemini-nano-banana-2.1": Model(14, FOURTEEN, {"1K": ("1K", 1120), "2K": ("2K", 1680),
                                                   "4K": ("4K", 3780)}),
}
# The published 2.5 Flash Image sizes (about one megapixel at every ratio).
FLASH_25_PIXELS = {"1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832),
                   "3:4": (864, 1184), "4:3": (1184, 864), "4:5": (896, 1152),
                   "5:4": (1152, 896), "9:16": (768, 1344), "16:9": (1344, 768),
                   "21:9": (1536, 672)}
IMAGE_CONFIG_FIELDS = {"aspectRatio", "imageSize"}
# The request body's service tier (ai.google.dev/gemini-api/docs/optimization): the Gemini
# API's only; Vertex AI refuses the field here.
SERVICE_TIERS = ("standard", "flex", "priority")
VERTEX_ONLY_FIELDS = {"personGeneration", "prominentPeople", "imageOutputOptions"}
INPUT_MIMES = {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"}
_PATH = re.compile(r"^/(v1|v1beta1|v1beta)/(?:projects/([^/]+)/locations/([^/]+)/)?"
                   r"(?:publishers/google/)?models/([^/:]+):generateContent$")


@dataclass(frozen=True)
class Seen:
    """One request as the fake received it."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    json: Any


def error(code: int, status: str, message: str, details: Iterable[dict[str, Any]] = (),
          headers: dict[str, str] | None = None) -> httpx.Response:
    """Google's google.rpc.Status error body."""
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details := list(details):
        body["details"] = details
    return httpx.Response(code, json={"error": body}, headers=headers)


def error_info(reason: str, service: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
            "domain": "googleapis.com", "metadata": {"service": service}}


class FakeGemini(httpx.AsyncBaseTransport):
    def __init__(self, *, vertex: bool = False, api_key: str = "test-key",
                 tokens: Iterable[str] = ("tok-1",), project: str = "proj-1",
                 location: str = "global", delay_s: float = 0.0) -> None:
        self.vertex = vertex
        self.api_key = api_key
        self.tokens = set(tokens)
        self.project = project
        self.location = location
        self.delay_s = delay_s
        self.script: deque[str] = deque()
        self.seen: list[Seen] = []

    def then(self, *scenarios: str) -> FakeGemini:
        unknown = [s for s in scenarios if s not in SCENARIOS]
        assert not unknown, f"unknown scenarios {unknown}"
        self.script.extend(scenarios)
        return self

    @property
    def service(self) -> str:
        return "aiplatform.googleapis.com" if self.vertex else GEMINI_HOST

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body: Any = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        if self.delay_s:
            # A real transport enforces the client's read timeout; so does this one.
            limit = (request.extensions.get("timeout") or {}).get("read")
            await asyncio.sleep(self.delay_s if limit is None else min(self.delay_s, limit))
            if limit is not None and self.delay_s > limit:
                raise httpx.ReadTimeout("fake upstream too slow", request=request)
        match = _PATH.match(request.url.path)
        if request.method != "POST" or match is None or not self._host_ok(request, match):
            return httpx.Response(404, text="<html><body>Error 404 (Not Found)</body></html>",
                                  headers={"content-type": "text/html"})
        refused = self._auth(request, express=match.group(2) is None)
        if refused is not None:
            return refused
        model = MODELS.get(match.group(4))
        if model is None:
            return error(404, "NOT_FOUND", f"models/{match.group(4)} is not found for API "
                         "version v1beta, or is not supported for generateContent.")
        problem = self._invalid(body, model)
        if problem:
            return error(400, "INVALID_ARGUMENT", problem)
        return SCENARIOS[self.script.popleft() if self.script else "ok"](self, match.group(4),
                                                                         body)

    def _host_ok(self, request: httpx.Request, match: re.Match[str]) -> bool:
        if not self.vertex:
            return request.url.host == GEMINI_HOST and match.group(1) == "v1beta" \
                and match.group(2) is None and "publishers/" not in request.url.path
        if match.group(2) is None:  # express mode: the global host, no project
            return request.url.host == "aiplatform.googleapis.com"
        host = "aiplatform.googleapis.com" if self.location == "global" \
            else f"{self.location}-aiplatform.googleapis.com"
        return (request.url.host, match.group(2), match.group(3)) == \
            (host, self.project, self.location) and match.group(1) != "v1beta"

    def _auth(self, request: httpx.Request, express: bool) -> httpx.Response | None:
        key = request.headers.get("x-goog-api-key")
        bearer = request.headers.get("authorization", "")
        if self.vertex and not express:
            if bearer.removeprefix("Bearer ") in self.tokens and bearer.startswith("Bearer "):
                return None
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                         "credentials. Expected OAuth 2 access token, login cookie or other "
                         "valid authentication credential. See https://developers.google.com/"
                         "identity/sign-in/web/devconsole-project.",
                         [error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", self.service)])
        if key is None:
            return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers "
                         "(callers without established identity). Please use API Key or other "
                         "form of API consumer identity to call this API.")
        if key != self.api_key:
            return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API "
                         "key.", [error_info("API_KEY_INVALID", self.service)])
        return None

    def _invalid(self, body: Any, model: Model) -> str | None:
        """Google's 400 message for a request it would refuse, else None."""
        try:
            parts = body["contents"][0]["parts"]
            config = body.get("generationConfig", {})
            image_config = config.get("imageConfig", {})
        except (KeyError, IndexError, TypeError, AttributeError):
            return "Invalid JSON payload received. contents is required."
        tier = body.get("serviceTier")
        if tier is not None and (self.vertex or tier not in SERVICE_TIERS):
            return (f'Invalid value at \'service_tier\' ({tier!r}): the Gemini API takes '
                    f"{', '.join(SERVICE_TIERS)}")
        allowed = IMAGE_CONFIG_FIELDS | (VERTEX_ONLY_FIELDS if self.vertex else set())
        for name in image_config:
            if name not in allowed:
                return (f'Invalid JSON payload received. Unknown name "{name}" at '
                        "'generation_config.image_config': Cannot find field.")
        if "IMAGE" not in config.get("responseModalities", ()):
            return "Model does not support the requested response modalities: TEXT"
        if config.get("candidateCount", 1) != 1 and model.fixed_tokens == 0:
            return "Multiple candidates is not enabled for this model."
        ratio = image_config.get("aspectRatio")
        if ratio is not None and ratio not in model.ratios:
            return f"Unsupported aspect ratio: {ratio}"
        size = image_config.get("imageSize")
        if size is not None and size not in model.sizes:
            # imageSize on 2.5 Flash Image is unconfirmed upstream; this fake refuses it.
            return f"Unsupported image size: {size}"
        images = [p for p in parts if "inlineData" in p or "fileData" in p]
        if len(images) > model.max_refs:
            return f"Too many input images: {len(images)} (max {model.max_refs})"
        return next(filter(None, map(_bad_part, images)), None)

    def image_for(self, model_id: str, body: dict[str, Any]) -> tuple[bytes, str, int]:
        """(encoded bytes, mime, output image tokens) of the image this request asks for."""
        model = MODELS[model_id]
        image_config = body["generationConfig"].get("imageConfig", {})
        ratio = image_config.get("aspectRatio") or _input_ratio(body, model)
        tier, tokens = model.sizes.get(image_config.get("imageSize", "1K"),
                                       ("1K", model.fixed_tokens or 1120))
        width, height = FLASH_25_PIXELS[ratio] if model.fixed_tokens \
            else geometry.pixels(ratio, tier)
        mime = (image_config.get("imageOutputOptions") or {}).get("mimeType", "image/png")
        prompt = body["contents"][0]["parts"][-1].get("text", "")
        data = imaging.encode(width, height, mime.removeprefix("image/"), prompt)
        return data, mime, tokens


def _bad_part(part: dict[str, Any]) -> str | None:
    if "fileData" in part:
        uri = part["fileData"].get("fileUri", "")
        return None if uri.startswith("https://") else f"Unsupported file uri: {uri}"
    inline = part["inlineData"]
    if inline.get("mimeType") not in INPUT_MIMES:
        return f"Unsupported MIME type: {inline.get('mimeType')}"
    try:
        data = base64.b64decode(inline["data"], validate=True)
    except (binascii.Error, KeyError):
        return "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES)"
    return None if imaging.sniff(data) else "Unable to process input image."


def _input_ratio(body: dict[str, Any], model: Model) -> str:
    """No aspectRatio: the model follows the first reference image, else 1:1."""
    for part in body["contents"][0]["parts"]:
        if "inlineData" in part:
            size = imaging.dimensions(base64.b64decode(part["inlineData"]["data"]))
            if size:
                return geometry.nearest_ratio(*size, model.ratios)
    return "1:1"


def _usage(body: dict[str, Any], image_tokens: int, text_tokens: int = 0) -> dict[str, Any]:
    parts = body["contents"][0]["parts"]
    prompt_text = len(parts[-1].get("text", "").split())
    prompt_images = 560 * sum(1 for p in parts if "inlineData" in p or "fileData" in p)
    details = [{"modality": "TEXT", "tokenCount": prompt_text}]
    if prompt_images:
        details.append({"modality": "IMAGE", "tokenCount": prompt_images})
    out = [{"modality": "IMAGE", "tokenCount": image_tokens}] if image_tokens else []
    if text_tokens:
        out.insert(0, {"modality": "TEXT", "tokenCount": text_tokens})
    usage = {"promptTokenCount": prompt_text + prompt_images,
             "candidatesTokenCount": image_tokens + text_tokens,
             "totalTokenCount": prompt_text + prompt_images + image_tokens + text_tokens,
             "promptTokensDetails": details}
    if out:
        usage["candidatesTokensDetails"] = out
    return usage


def _reply(model_id: str, candidates: list[dict[str, Any]], usage: dict[str, Any],
           **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"candidates": candidates, "usageMetadata": usage,
                                     "modelVersion": model_id,
                                     "responseId": "resp-" + model_id[-5:], **extra})


def _ok(fake: FakeGemini, model_id: str, body: dict[str, Any],
        thoughts: bool = False) -> httpx.Response:
    data, mime, tokens = fake.image_for(model_id, body)
    image = {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}
    parts: list[dict[str, Any]] = [{"text": "Here is your image."}, image]
    if thoughts:
        draft = imaging.encode(64, 64, "png", "draft")
        parts = [{"text": "**Composing** the scene", "thought": True},
                 {"inlineData": {"mimeType": "image/png",
                                 "data": base64.b64encode(draft).decode()}, "thought": True},
                 {**image, "thoughtSignature": "CpYBAcu98PA"}]
    usage = _usage(body, tokens, text_tokens=5)
    if thoughts:
        usage["thoughtsTokenCount"] = 212
        usage["totalTokenCount"] += 212
    return _reply(model_id, [{"content": {"role": "model", "parts": parts},
                              "finishReason": "STOP", "index": 0}], usage)


def _finish(reason: str, parts: list[dict[str, Any]] | None
            ) -> Callable[[FakeGemini, str, dict[str, Any]], httpx.Response]:
    def answer(fake: FakeGemini, model_id: str, body: dict[str, Any]) -> httpx.Response:
        candidate: dict[str, Any] = {"finishReason": reason, "index": 0}
        if parts is not None:
            candidate["content"] = {"role": "model", "parts": parts}
        return _reply(model_id, [candidate], _usage(body, 0))
    return answer


def _quota(fake: FakeGemini, model_id: str, daily: bool) -> httpx.Response:
    quota = "GenerateRequestsPerDayPerProjectPerModel" if daily \
        else "GenerateRequestsPerMinutePerProjectPerModel"
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": f"{fake.service}/generate_content_paid_tier_requests",
            "quotaId": quota, "quotaDimensions": {"location": "global", "model": model_id}}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
    ]
    if not daily:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": "53s"})
    return error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check "
                 "your plan and billing details. For more information on this error, head to: "
                 "https://ai.google.dev/gemini-api/docs/rate-limits. Please retry in "
                 "53.016342224s.", details)


Answer = Callable[[FakeGemini, str, dict[str, Any]], httpx.Response]

SCENARIOS: dict[str, Answer] = {
    "ok": _ok,
    "thoughts": lambda f, m, b: _ok(f, m, b, thoughts=True),
    "text_only": _finish("STOP", [{"text": "I can't create images of real people."}]),
    "image_safety": _finish("IMAGE_SAFETY", []),
    "prohibited": _finish("IMAGE_PROHIBITED_CONTENT", None),
    "no_image": _finish("NO_IMAGE", None),
    "other": _finish("IMAGE_OTHER", []),
    "prompt_blocked": lambda f, m, b: httpx.Response(200, json={
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": _usage(b, 0),
        "modelVersion": m, "responseId": "blocked-1"}),
    "rate_limited": lambda f, m, b: _quota(f, m, daily=False),
    "daily_quota": lambda f, m, b: _quota(f, m, daily=True),
    "retry_header": lambda f, m, b: error(429, "RESOURCE_EXHAUSTED", "Resource exhausted. "
                                          "Please try again later.",
                                          headers={"retry-after": "7"}),
    "overloaded": lambda f, m, b: error(503, "UNAVAILABLE", "The model is overloaded. "
                                        "Please try again later."),
    "internal": lambda f, m, b: error(500, "INTERNAL", "An internal error has occurred."),
    "deadline": lambda f, m, b: error(504, "DEADLINE_EXCEEDED", "Deadline expired before "
                                      "operation could complete."),
    "precondition": lambda f, m, b: error(400, "FAILED_PRECONDITION", "User location is not "
                                          "supported for the API use."),
    "bad_gateway_html": lambda f, m, b: httpx.Response(
        502, text="<html><title>502 Bad Gateway</title></html>",
        headers={"content-type": "text/html"}),
    "not_json": lambda f, m, b: httpx.Response(200, text="<html>oops</html>"),
}


# --- Test helpers: a route and a request for these upstreams, and one attempt at it ---------

GEMINI_BASE = f"https://{GEMINI_HOST}/v1beta"
VERTEX_BASE = "https://aiplatform.googleapis.com/v1"


def make_route(upstream_model: str = "gemini-3.1-flash-image", *, protocol: str = "gemini",
               key: str | None = "test-key", base_url: str | None = None,
               options: dict[str, Any] | None = None,
               provider_options: dict[str, Any] | None = None) -> Route:
    provider = Provider(
        name="google", protocol=protocol,
        base_url=base_url or (VERTEX_BASE if protocol == "vertex" else GEMINI_BASE),
        key=Secret(key) if key is not None else None, timeout_s=60.0,
        options=provider_options or {})
    caps = Capabilities(tiers=("0.5K", "1K", "2K", "4K"), aspect_ratios=ASPECT_RATIOS, max_n=4,
                        edits=True, max_reference_images=14)
    return Route(id=f"nano-banana-2/{provider.name}", model="nano-banana-2", provider=provider,
                 upstream_model=upstream_model, price_per_image={"1K": Decimal("0.0672")},
                 capabilities=caps, options=options or {})


def make_request(**changes: Any) -> ImageRequest:
    base = ImageRequest(kind="generate", model="nano-banana-2", prompt="a lighthouse at dawn",
                        n=1, geometry=Geometry("16:9", "2K", None, "aspect_ratio"),
                        output_format="png", response_format="b64_json")
    return dataclasses.replace(base, **changes)


def attempt(adapter: Adapter, request: ImageRequest, route: Route, fake: FakeGemini,
            deadline_s: float = 10.0, credentials: Credentials | None = None) -> ImageResult:
    """One attempt through the real driver: flows.drive for one image, generate for more."""
    async def go() -> ImageResult:
        async with httpx.AsyncClient(transport=fake) as client:
            deadline = time.monotonic() + deadline_s
            if request.n == 1 and credentials is None:
                return await flows.drive(adapter.flow(request, route), route, client, deadline)
            return await flows.generate(adapter, route, request, client, deadline, credentials)
    return asyncio.run(go())


def failure(adapter: Adapter, request: ImageRequest, route: Route, fake: FakeGemini,
            deadline_s: float = 10.0, credentials: Credentials | None = None) -> Failure:
    try:
        attempt(adapter, request, route, fake, deadline_s, credentials)
    except UpstreamError as exc:
        return exc.failure
    raise AssertionError("the attempt succeeded")
