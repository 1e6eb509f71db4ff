"""A fake BytePlus ModelArk images API (Seedream) in Ark's own wire format.

POST /api/v3/images/generations with `Authorization: Bearer <key>`. The request is checked as
Ark checks it (required fields, `size` as 1K/2K/4K or WxH within the model's pixel and ratio
limits, response_format, image refs as URLs or lowercase data: URLs, seed range), and a wrong
field is answered with Ark's error envelope naming it. Answers are real JPEG images of the
asked size, as b64_json or as URLs on an object-storage host this transport also serves, with
Ark's `usage` block and an `x-request-id` header.

Scripted per test: `script` is a queue of replies used before the default success (Ark error
envelopes, odd 200 bodies); `item_errors` turns chosen images of a batch into per-image errors
inside data[] (a content refusal lets the batch go on, an internal error ends it, as Ark
documents); `delay_s` makes every API answer slow, timing out like a socket when the caller's
read timeout is shorter.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from proxy import geometry
from tests.fakes.openai_images import (
    Canned,
    Seen,
    authorised,
    canned_response,
    image_bytes,
    json_response,
    slow,
)

API_HOST = "ark.ap-southeast.bytepluses.com"
BASE_URL = f"https://{API_HOST}/api/v3"
GENERATIONS_PATH = "/api/v3/images/generations"
# Where result URLs point (TOS object storage); the exact bucket name is our guess.
FILES_HOST = "ark-content-generation-ap-southeast-1.tos-ap-southeast-1.bytepluses.com"

# Total pixels each model takes for a WxH size (4.0's unless the model id names another).
PIXELS_4_0 = (921_600, 16_777_216)  # 1280x720 to 4096x4096
PIXELS = {"seedream-4-5": (3_686_400, 16_777_216),  # 2560x1440 to 4096x4096
          "seedream-3-0": (262_144, 4_194_304)}  # 512x512 to 2048x2048
MAX_RATIO = 16.0
MAX_REFERENCES = 14
MAX_BATCH = 15
TOKEN_SIZES = {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)}
_DATA_URL = re.compile(r"data:image/[a-z]+;base64,")


def request_id() -> str:
    """An Ark-style request id: '02', the time in ms, then hex."""
    return f"02{int(time.time() * 1000)}{secrets.token_hex(16)}"


def ark_error(status: int, type_: str, code: str, message: str, param: str = "",
              headers: dict[str, str] | None = None) -> Canned:
    """Ark's error envelope; messages end with the request id, as Ark's do."""
    body = {"error": {"code": code, "message": f"{message} Request id: {request_id()}",
                      "param": param, "type": type_}}
    return Canned(status, body, headers or {})


AUTHENTICATION = ark_error(401, "Unauthorized", "AuthenticationError",
                           "The API key or AK/SK in the request is missing or invalid.")
ACCOUNT_OVERDUE = ark_error(403, "Forbidden", "AccountOverdueError",
                            "The request failed because your account has an overdue balance.")
ACCESS_DENIED = ark_error(403, "Forbidden", "AccessDenied", "The request failed because you "
                          "do not have access to the requested resource.")
MODEL_NOT_OPEN = ark_error(404, "NotFound", "ModelNotOpen", "Your account has not activated "
                           "the model seedream-4-0-250828. Please activate the model service "
                           "in the Ark Console.")
MODEL_NOT_FOUND = ark_error(404, "NotFound", "InvalidEndpointOrModel.NotFound",
                            "The model or endpoint seedream-9 does not exist or you do not "
                            "have access to it.")
CLOSED_ENDPOINT = ark_error(400, "BadRequest", "InvalidEndpoint.ClosedEndpoint",
                            "The request targeted an endpoint that is currently closed or "
                            "temporarily unavailable.")
INVALID_SIZE = ark_error(400, "BadRequest", "InvalidParameter", "The parameter `size` "
                         "specified in the request is not valid: image size must be at least "
                         "921600 pixels.", "size")
MISSING_PROMPT = ark_error(400, "BadRequest", "MissingParameter", "The request failed because "
                           "it is missing one or multiple required parameters: prompt.",
                           "prompt")
INPUT_TEXT_SENSITIVE = ark_error(400, "BadRequest", "InputTextSensitiveContentDetected",
                                 "The request failed because the input text may contain "
                                 "sensitive information.")
INPUT_IMAGE_SENSITIVE = ark_error(400, "BadRequest", "InputImageSensitiveContentDetected",
                                  "The request failed because the input image may contain "
                                  "sensitive information.")
OUTPUT_IMAGE_SENSITIVE = ark_error(400, "BadRequest", "OutputImageSensitiveContentDetected",
                                   "The request failed because the output image may contain "
                                   "sensitive information.")
INPUT_TEXT_RISK = ark_error(400, "BadRequest", "InputTextRiskDetection", "The request could "
                            "not be processed because the input text includes sensitive "
                            "content that violates ContentSecurityDetection.")
RATE_LIMITED = ark_error(429, "TooManyRequests", "RateLimitExceeded.EndpointRPMExceeded",
                         "The request has exceeded the rate limit of the endpoint. Please "
                         "retry later.", headers={"retry-after": "7"})
IPM_LIMITED = ark_error(429, "TooManyRequests", "RateLimitExceeded.EndpointIPMExceeded",
                        "The request has exceeded the images-per-minute limit of the "
                        "endpoint.")
SERVER_OVERLOADED = ark_error(429, "TooManyRequests", "ServerOverloaded", "The service is "
                              "currently unable to handle additional requests due to server "
                              "overload.")
UNAVAILABLE = ark_error(503, "ServiceUnavailable", "ServerOverloaded", "The service is "
                        "currently unable to handle additional requests due to server "
                        "overload.", headers={"retry-after": "3"})
INTERNAL = ark_error(500, "InternalServerError", "InternalServiceError",
                     "The service encountered an unexpected internal error.")
GATEWAY_HTML = Canned(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                      {"content-type": "text/html"})

# Per-image errors as they appear inside data[] (code, message).
ITEM_BLOCKED = ("OutputImageSensitiveContentDetected",
                "The output image may contain sensitive information.")
ITEM_INTERNAL = ("InternalServiceError", "The service encountered an unexpected internal error.")


class Invalid(Exception):
    """A request Ark would refuse: the canned 400 to answer."""

    def __init__(self, code: str, param: str, message: str) -> None:
        super().__init__(message)
        self.reply = ark_error(400, "BadRequest", code, message, param)


@dataclass
class FakeBytePlus(httpx.AsyncBaseTransport):
    """Ark's images endpoint on API_HOST and its result files on FILES_HOST."""

    key: str = "test-key"
    result_host: str = FILES_HOST
    item_errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    delay_s: float = 0.0
    script: list[Canned] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0  # the most generation calls served at once

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        seen = Seen(request.method, request.url, request.headers)
        if raw and request.headers.get("content-type", "").startswith("application/json"):
            seen.json = orjson.loads(raw)
        self.requests.append(seen)
        if request.url.host != API_HOST:
            return self._file(request.url.path)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await slow(request, self.delay_s)
        finally:
            self.in_flight -= 1
        return self._answer(request, seen.json)

    def _answer(self, request: httpx.Request, body: Any) -> httpx.Response:
        if not authorised(request, "authorization", "Bearer", self.key):
            return canned_response(AUTHENTICATION)
        if (request.method, request.url.path) != ("POST", GENERATIONS_PATH):
            return canned_response(ark_error(404, "NotFound", "InvalidEndpoint.NotFound",
                                             f"The path {request.url.path} does not exist."))
        if self.script:
            return canned_response(self.script.pop(0))
        try:
            return self._generate(body)
        except Invalid as exc:
            return canned_response(exc.reply)

    def _generate(self, body: Any) -> httpx.Response:
        if not isinstance(body, dict):
            raise Invalid("InvalidParameter", "", "The request body is not a JSON object.")
        for name in ("model", "prompt"):
            if not body.get(name):
                raise Invalid("MissingParameter", name, "The request failed because it is "
                              f"missing one or multiple required parameters: {name}.")
        width, height = size_of(body.get("size", "2048x2048"), str(body["model"]))
        # Seedream answers JPEG; `output_format` is for newer models (not in hosts.md).
        fmt = _choice(body, "output_format", ("jpeg", "png"), "jpeg")
        as_url = _choice(body, "response_format", ("url", "b64_json"), "url") == "url"
        _check_options(body)
        data: list[dict[str, Any]] = []
        for index in range(_batch_size(body)):
            if index in self.item_errors:
                code, message = self.item_errors[index]
                data.append({"error": {"code": code, "message": message}})
                if code.startswith("InternalServiceError"):
                    break  # Ark: an internal error stops the rest of the batch
                continue
            raw = image_bytes(width, height, fmt, f"{body['prompt']}|{index}")
            data.append({**self._deliver(raw, fmt, as_url), "size": f"{width}x{height}"})
        made = sum(1 for item in data if "error" not in item)
        tokens = round(made * width * height / 256)
        return json_response(200, {
            "model": body["model"], "created": int(time.time()), "data": data,
            "usage": {"generated_images": made, "output_tokens": tokens, "total_tokens": tokens},
        }, {"x-request-id": request_id()})

    def _deliver(self, raw: bytes, fmt: str, as_url: bool) -> dict[str, str]:
        if not as_url:
            return {"b64_json": base64.b64encode(raw).decode("ascii")}
        path = f"/{secrets.token_hex(8)}/{secrets.token_hex(6)}.{fmt}"
        self.files[path] = raw
        return {"url": f"https://{self.result_host}{path}"}

    def _file(self, path: str) -> httpx.Response:
        if path not in self.files:
            return httpx.Response(404, content=b"NoSuchKey",
                                  headers={"content-type": "application/xml"})
        fmt = path.rpartition(".")[2]
        return httpx.Response(200, content=self.files[path],
                              headers={"content-type": f"image/{fmt}"})


def size_of(size: Any, model: str) -> tuple[int, int]:
    """WxH as Ark checks it: a 1K/2K/4K token, or pixels and ratio within the model's limits."""
    if size in TOKEN_SIZES:
        width, height = TOKEN_SIZES[size]
    else:
        try:
            width, height = geometry.parse_size(str(size))
        except ValueError:
            raise Invalid("InvalidParameter", "size", "The parameter `size` specified in the "
                          f"request is not valid: {size!r}.") from None
    low, high = next((v for k, v in PIXELS.items() if k in model), PIXELS_4_0)
    if not low <= width * height <= high:
        raise Invalid("InvalidParameter", "size", "The parameter `size` specified in the "
                      f"request is not valid: total pixels must be in [{low}, {high}].")
    if max(width / height, height / width) > MAX_RATIO:
        raise Invalid("InvalidParameter", "size", "The parameter `size` specified in the "
                      "request is not valid: aspect ratio must be in [1/16, 16].")
    return width, height


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value not in allowed:
        raise Invalid("InvalidParameter", name, f"The parameter `{name}` specified in the "
                      f"request is not valid: must be one of {', '.join(allowed)}.")
    return str(value)


def _check_options(body: dict[str, Any]) -> None:
    """The optional fields' types and ranges; unknown fields pass, as on Ark."""
    if "watermark" in body and not isinstance(body["watermark"], bool):
        raise Invalid("InvalidParameter", "watermark", "watermark must be a boolean.")
    seed = body.get("seed", -1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed <= 2_147_483_647:
        raise Invalid("InvalidParameter", "seed", "seed must be in [-1, 2147483647].")
    refs = body.get("image", [])
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or len(refs) > MAX_REFERENCES:
        raise Invalid("InvalidParameter", "image", f"image takes 1 to {MAX_REFERENCES} images.")
    for ref in refs:
        if not isinstance(ref, str) or not (ref.startswith(("https://", "http://"))
                                            or _DATA_URL.match(ref)):
            raise Invalid("InvalidParameter", "image", "image must be a URL or "
                          "data:image/<format>;base64,<data> with the format in lowercase.")


def _batch_size(body: dict[str, Any]) -> int:
    """One image, or with sequential generation `auto` the most the options allow (the real
    model decides from the prompt; the fake always makes the maximum)."""
    mode = _choice(body, "sequential_image_generation", ("disabled", "auto"), "disabled")
    if mode == "disabled":
        return 1
    refs = body.get("image", [])
    taken = 1 if isinstance(refs, str) else len(refs)
    options = body.get("sequential_image_generation_options") or {}
    wanted = int(options.get("max_images", MAX_BATCH))
    if not 1 <= wanted <= MAX_BATCH:
        raise Invalid("InvalidParameter", "sequential_image_generation_options.max_images",
                      f"max_images must be in [1, {MAX_BATCH}].")
    return max(0, min(wanted, MAX_BATCH - taken))
