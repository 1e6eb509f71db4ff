"""A fake OpenAI Images API: /v1/images/generations and /v1/images/edits in OpenAI's wire format.

Generations take JSON; edits take multipart (`image`, repeated `image[]`, `mask`) or the JSON
edit variant (`images: [{image_url}]`). Answers are real PNG/JPEG/WebP images of the asked
size, with `usage` and the `x-request-id` header. Scripted per test: `script` is a queue of
replies used before the default success (error bodies, 200-with-error, odd data[] items);
`result` switches data[] to URLs on a file host the same transport serves; `delay_s` makes
every answer slow, and a delay beyond the caller's read timeout ends in httpx.ReadTimeout as
on a real socket. The module also holds the small helpers the Together and BytePlus fakes use.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import itertools
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson

from proxy import geometry, imaging
from proxy.catalog import Capabilities, Provider, Route
from proxy.config import Secret
from proxy.domain import ASPECT_RATIOS, OUTPUT_FORMATS, TIERS, Geometry, ImageRequest, ImageResult
from proxy.failures import Failure
from proxy.providers.base import Adapter
from tests import protocol_kit

API_HOST = "api.openai.com"
BASE_URL = f"https://{API_HOST}/v1"
FILES_HOST = "files.oaiusercontent.example"

_REQUEST_IDS = itertools.count(1)


@dataclass(frozen=True)
class Canned:
    """A scripted reply: status, JSON body (or raw bytes) and headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def error_body(message: str, type_: str, code: str | None, param: str | None = None
               ) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


MODERATION_BLOCKED = Canned(400, error_body(
    "Your request was rejected by the safety system. If you believe this is an error, contact "
    "us at help.openai.com and include the request ID req_1234.",
    "image_generation_user_error", "moderation_blocked"))
CONTENT_POLICY = Canned(400, error_body(
    "Your request was rejected as a result of our safety system. Your prompt may contain text "
    "that is not allowed by our safety system.", "invalid_request_error",
    "content_policy_violation"))
INVALID_SIZE = Canned(400, error_body("The size is not supported by this model.",
                                      "invalid_request_error", "invalid_size", "size"))
RATE_LIMITED = Canned(429, error_body(
    "Rate limit exceeded for images per minute in organization org-abc. Limit: 5/1min. "
    "Current: 6/1min.", "requests", "rate_limit_exceeded"), {"retry-after": "7"})
INSUFFICIENT_QUOTA = Canned(429, error_body(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota", "insufficient_quota"))
MODEL_NOT_FOUND = Canned(404, error_body(
    "The model `gpt-image-1` does not exist or you do not have access to it.",
    "invalid_request_error", "model_not_found"))
SERVER_ERROR = Canned(500, error_body("The server had an error while processing your request.",
                                      "server_error", None))
OVERLOADED = Canned(503, error_body("The engine is currently overloaded, please try again later",
                                    "server_error", None), {"retry-after": "3"})
GATEWAY_HTML = Canned(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                      {"content-type": "text/html"})
ERROR_IN_200 = Canned(200, {"created": 1, "data": [], **error_body(
    "Your request was rejected by the safety system.", "image_generation_user_error",
    "moderation_blocked")})


def json_response(status: int, body: Any, headers: dict[str, str] | None = None
                  ) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.Response(status, content=body, headers=headers or {})
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **(headers or {})})


def canned_response(canned: Canned) -> httpx.Response:
    return json_response(canned.status, canned.body, canned.headers)


def image_bytes(width: int, height: int, fmt: str = "png", seed: str = "x") -> bytes:
    return imaging.encode(width, height, fmt, seed)


def image_b64(width: int, height: int, fmt: str = "png", seed: str = "x") -> str:
    return base64.b64encode(image_bytes(width, height, fmt, seed)).decode("ascii")


def parse_multipart(request: httpx.Request, body: bytes
                    ) -> tuple[dict[str, str], list[tuple[str, str, str, bytes]]]:
    """Form fields and (field, filename, content type, bytes) files of a multipart body."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    form: dict[str, str] = {}
    files = []
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            files.append((name, part.get_filename(), part.get_content_type(), payload))
        else:
            form[name] = payload.decode()
    return form, files


async def slow(request: httpx.Request, delay_s: float) -> None:
    """Wait delay_s, or time out the way a socket would when the caller's read timeout is
    shorter."""
    if delay_s <= 0:
        return
    timeout = (request.extensions.get("timeout") or {}).get("read")
    if timeout is not None and timeout < delay_s:
        await asyncio.sleep(timeout)
        raise httpx.ReadTimeout("timed out", request=request)
    await asyncio.sleep(delay_s)


def authorised(request: httpx.Request, header: str, scheme: str, key: str) -> bool:
    expected = f"{scheme} {key}" if scheme else key
    return request.headers.get(header) == expected


@dataclass
class Seen:
    """One request the fake received, decoded."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, str, bytes]] = field(default_factory=list)


# `xhigh` and `max` exist for gpt-image-2.5 and its snapshots only (openai-python 3.63.0,
# types/image_generate_params.py); other models answer OpenAI's invalid_value 400 [I: body].
_QUALITIES = ("low", "medium", "high", "auto")
_QUALITIES_25 = (*_QUALITIES, "xhigh", "max")


def _quality_refused(fields: dict[str, Any]) -> dict[str, Any] | None:
    quality = fields.get("quality", "auto")
    allowed = _QUALITIES_25 if str(fields.get("model", "")).startswith("gpt-image-2.5") \
        else _QUALITIES
    if quality in allowed:
        return None
    return error_body(f"Invalid value: '{quality}'. Supported values are: "
                      f"{', '.join(repr(q) for q in allowed)}.", "invalid_request_error",
                      "invalid_value", "quality")


@dataclass
class FakeOpenAIImages(httpx.AsyncBaseTransport):
    """api.openai.com's images endpoints, and its result files on FILES_HOST."""

    key: str = "test-key"
    auth_header: str = "authorization"
    auth_scheme: str = "Bearer"
    prefix: str = "/v1"
    result: str = "b64_json"  # "b64_json" | "url"
    echo_size: bool = True  # newer responses echo `size`; some hosts do not
    delay_s: float = 0.0
    script: list[Canned] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        seen = Seen(request.method, request.url, request.headers)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/"):
            seen.form, seen.files = parse_multipart(request, body)
        elif body:
            seen.json = orjson.loads(body)
        self.requests.append(seen)
        if request.url.host == FILES_HOST:
            return self._file(request.url.path)
        await slow(request, self.delay_s)
        if not authorised(request, self.auth_header, self.auth_scheme, self.key):
            return json_response(401, error_body(
                "Incorrect API key provided: sk-wr***ng. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                "invalid_api_key"))
        kind = request.url.path.removeprefix(self.prefix)
        if request.method != "POST" or kind not in ("/images/generations", "/images/edits"):
            return json_response(404, error_body(f"Invalid URL ({request.method} "
                                                 f"{request.url.path})", "invalid_request_error",
                                                 None))
        if self.script:
            return canned_response(self.script.pop(0))
        fields = seen.json if seen.json is not None else seen.form
        if refused := _quality_refused(fields):
            return json_response(400, refused)
        return self._success(fields)

    def _success(self, fields: dict[str, Any]) -> httpx.Response:
        size = str(fields.get("size", "auto"))
        width, height = (1024, 1024) if size == "auto" else geometry.parse_size(size)
        fmt = str(fields.get("output_format", "png"))
        request_id = f"req_{next(_REQUEST_IDS):06d}"
        data = []
        for i in range(int(fields.get("n", 1))):
            raw = image_bytes(width, height, fmt, f"{fields['prompt']}|{i}")
            if self.result == "url":
                name = f"/img/{secrets.token_hex(6)}.{fmt}"
                self.files[name] = (raw, f"image/{fmt}")
                data.append({"url": f"https://{FILES_HOST}{name}"})
            else:
                data.append({"b64_json": base64.b64encode(raw).decode("ascii")})
        body: dict[str, Any] = {
            "created": int(time.time()), "data": data,
            "background": "opaque" if fields.get("background", "auto") == "auto"
            else fields["background"],
            "output_format": fmt, "quality": "high" if fields.get("quality", "auto") == "auto"
            else fields["quality"],
            "usage": {"total_tokens": 4210, "input_tokens": 50, "output_tokens": 4160,
                      "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
                      "output_tokens_details": {"image_tokens": 4100, "text_tokens": 60}},
        }
        if self.echo_size:
            body["size"] = f"{width}x{height}"
        return json_response(200, body, {"x-request-id": request_id})

    def _file(self, path: str) -> httpx.Response:
        if path not in self.files:
            return httpx.Response(404, content=b"not found")
        content, mime = self.files[path]
        return httpx.Response(200, content=content, headers={"content-type": mime})


# --- Builders the three protocol tests share: a route, a request, and one driven attempt. ---


def make_route(protocol: str, base_url: str, *, upstream_model: str = "gpt-image-2",
               key: str | None = "test-key", allowed_hosts: tuple[str, ...] = (),
               provider_options: dict[str, Any] | None = None,
               options: dict[str, Any] | None = None) -> Route:
    provider = Provider(name=protocol, protocol=protocol, base_url=base_url,
                        key=Secret(key) if key is not None else None, key_env="TEST_KEY",
                        timeout_s=30, allowed_hosts=allowed_hosts,
                        options=provider_options or {})
    capabilities = Capabilities(tiers=TIERS, aspect_ratios=ASPECT_RATIOS, max_n=10, edits=True,
                                max_reference_images=16, output_formats=OUTPUT_FORMATS,
                                backgrounds=("auto", "opaque", "transparent"))
    return Route(id=f"test/{protocol}", model="test", provider=provider,
                 upstream_model=upstream_model, price_per_image={t: Decimal("0.01") for t in TIERS},
                 capabilities=capabilities, options=options or {})


def make_request(prompt: str = "a lighthouse at dawn", *, size: str | None = None,
                 ratio: str = "1:1", tier: str = "1K", **fields: Any) -> ImageRequest:
    """An ImageRequest as the API layer builds it; `size` sets an exact size (with its ratio
    and tier as the API would derive them)."""
    if size is not None:
        w, h = geometry.parse_size(size)
        shape = Geometry(geometry.nearest_ratio(w, h, ASPECT_RATIOS),
                         geometry.nearest_tier(w, h, TIERS), size, "size")
    else:
        shape = Geometry(ratio, tier, None, "aspect_ratio")
    values: dict[str, Any] = {"kind": "generate", "model": "test", "prompt": prompt, "n": 1,
                              "geometry": shape, "output_format": "png",
                              "response_format": "b64_json"}
    return ImageRequest(**{**values, **fields})


def run(adapter: Adapter, request: ImageRequest, route: Route,
        transport: httpx.AsyncBaseTransport, deadline_s: float = 10.0) -> ImageResult:
    """One attempt through the real driver (flows.generate), as the router makes it."""
    return protocol_kit.run(adapter, transport, request, route, deadline_s)


def failure_of(adapter: Adapter, request: ImageRequest, route: Route,
               transport: httpx.AsyncBaseTransport, deadline_s: float = 10.0) -> Failure:
    return protocol_kit.failure_of(adapter, transport, request, route, deadline_s)
