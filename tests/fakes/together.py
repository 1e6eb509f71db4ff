"""A fake Together AI: POST /v1/images/generations and its result files, in Together's wire format.

JSON in (model, prompt, width, height, n, steps, seed, response_format `base64`|`url`,
output_format `jpeg`|`png`, reference_images or image_url, disable_safety_checker), and
`{"id", "model", "object": "list", "data": [{"index", "b64_json"|"url", "type", ...}]}` out, with
real PNG/JPEG images of the asked width and height. Like Together, the Google models take only
the listed sizes and only `reference_images`, and the safety checker answers 422. Errors come in
Together's shapes: `{"id", "error": {"message", "type", "param", "code"}}`, or a bare
`{"message"}`. Scripted per test: `script` is a queue of replies used before the default
success; `delay_s` makes every API answer slow (past the caller's read timeout it ends in
httpx.ReadTimeout, as on a socket). URL results are served by this transport on FILES_HOST.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.fakes.openai_images import (
    Canned,
    Seen,
    authorised,
    canned_response,
    error_body,
    image_bytes,
    json_response,
    slow,
)

API_HOST = "api.together.xyz"
BASE_URL = f"https://{API_HOST}/v1"
# Result URLs live on the .ai twin of the API host (the docs' response example).
FILES_HOST = "api.together.ai"

GOOGLE_1K = ("1024x1024", "1248x832", "832x1248", "1184x864", "864x1184", "896x1152",
             "1152x896", "768x1344", "1344x768", "1536x672")
# The 2K and 4K sets are the 1K set doubled and quadrupled, up to 6144x2688.
GOOGLE_SIZES = {"1K": GOOGLE_1K,
                **{tier: tuple(f"{int(w) * k}x{int(h) * k}" for w, h in
                               (s.split("x") for s in GOOGLE_1K)) for tier, k in
                   (("2K", 2), ("4K", 4))}}
MODELS = frozenset({"google/flash-image-2.5", "google/gemini-3-pro-image",
                    "google/flash-image-3.1", "google/flash-image-3.1-lite",
                    "black-forest-labs/FLUX.1-kontext-pro"})


def _request_id() -> str:
    return f"o{secrets.token_urlsafe(5)}-2kFHot-{secrets.token_hex(8)}-SJC"


def together_error(message: str, type_: str, code: str | None = None,
                   param: str | None = None) -> dict[str, Any]:
    """Together's error body: OpenAI's `error` object plus the request id."""
    return {"id": _request_id(), **error_body(message, type_, code, param)}


UNAUTHORIZED = Canned(401, together_error(
    "Invalid API key provided. You can find your API key at "
    "https://api.together.xyz/settings/api-keys.", "invalid_request_error", "invalid_api_key"))
NO_CREDIT = Canned(402, together_error(
    "Credit limit exceeded. Please navigate to https://api.together.xyz/settings/billing to add "
    "credit or upgrade your plan.", "credit_limit"))
NO_CREDIT_BARE = Canned(402, {"message": "Your account has reached its spending limit. Go to "
                                         "https://api.together.xyz/settings/billing."})
DATA_SHARING_BLOCKED = Canned(403, together_error(
    "Access to this partner model requires third-party data sharing to be enabled for your "
    "organization.", "invalid_request_error", "third_party_data_sharing_blocked"))
TIER_GATED = Canned(403, together_error(
    "Access to this model is allowed for build tier 2 and above. Please upgrade your tier by "
    "buying credits at https://api.together.xyz/settings/billing.", "invalid_request_error"))
MODEL_NOT_AVAILABLE = Canned(400, together_error(
    "Unable to access non-serverless model google/flash-image-3.1. Please visit "
    "https://api.together.ai/models/google/flash-image-3.1 to create and start a new dedicated "
    "endpoint for the model.", "invalid_request_error", "model_not_available"))
CONTENT_POLICY = Canned(400, together_error(
    "The prompt was rejected by the content policy of the model provider.",
    "invalid_request_error", "content_policy_violation"))
NSFW_BARE = Canned(422, {"message": "NSFW content was detected in the prompt."})
RATE_LIMITED = Canned(429, together_error(
    "You have exceeded the rate limit for this model. Please slow down.", "rate_limit_exceeded"),
    {"retry-after": "2"})
SERVER_ERROR = Canned(500, together_error("Internal server error", "server_error"))
OVERLOADED = Canned(503, together_error("The server is overloaded or not ready yet.",
                                        "server_error"), {"retry-after": "3"})
OVERLOADED_BARE = Canned(503, {"message": "Service Unavailable"})
GATEWAY_HTML = Canned(502, b"<html><head><title>502 Bad Gateway</title></head></html>",
                      {"content-type": "text/html"})

_FORMATS = ("jpeg", "png")
_RESPONSE_FORMATS = ("base64", "b64_json", "url")  # b64_json is accepted too, some clients send it


def _invalid(message: str, param: str | None = None) -> httpx.Response:
    return json_response(400, together_error(message, "invalid_request_error", None, param))


@dataclass
class FakeTogether(httpx.AsyncBaseTransport):
    """api.together.xyz's image generations and the result files on FILES_HOST."""

    key: str = "test-key"
    google_sizes: dict[str, tuple[str, ...]] = field(default_factory=lambda: GOOGLE_SIZES)
    flagged: tuple[str, ...] = ("nude",)  # prompt words that trip the safety checker
    delay_s: float = 0.0
    script: list[Canned] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        seen = Seen(request.method, request.url, request.headers,
                    orjson.loads(raw) if raw else None)
        self.requests.append(seen)
        if request.url.host == FILES_HOST and request.method == "GET":
            return self._file(request.url.path)
        await slow(request, self.delay_s)
        if not authorised(request, "authorization", "Bearer", self.key):
            return canned_response(UNAUTHORIZED)
        if (request.method, request.url.path) != ("POST", "/v1/images/generations"):
            return json_response(404, together_error(
                f"Not found: {request.method} {request.url.path}", "invalid_request_error"))
        if self.script:
            return canned_response(self.script.pop(0))
        body = seen.json if isinstance(seen.json, dict) else {}
        return self._refusal(body) or self._success(body)

    def _refusal(self, body: dict[str, Any]) -> httpx.Response | None:
        """The answer to a request Together would not run, or None."""
        model = body.get("model")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return _invalid("prompt is required", "prompt")
        if model not in MODELS:
            return json_response(404, together_error(
                f"Unable to access model {model}. Please visit https://api.together.xyz to see "
                "the list of supported models or contact the owner to request access.",
                "invalid_request_error", "model_not_found"))
        return (self._invalid_shape(body, str(model)) or self._invalid_references(body, str(model))
                or self._safety(body))

    def _invalid_shape(self, body: dict[str, Any], model: str) -> httpx.Response | None:
        n, width, height = body.get("n", 1), body.get("width", 1024), body.get("height", 1024)
        if not isinstance(n, int) or not 1 <= n <= 4:
            return _invalid("n must be between 1 and 4", "n")
        if not all(isinstance(v, int) and 64 <= v <= 6144 for v in (width, height)):
            return _invalid("width and height must be integers between 64 and 6144", "width")
        listed = [s for sizes in self.google_sizes.values() for s in sizes]
        if model.startswith("google/") and f"{width}x{height}" not in listed:
            return _invalid(f"Unsupported dimensions {width}x{height} for {model}. Supported: "
                            f"{', '.join(listed)}", "width")
        if body.get("response_format", "url") not in _RESPONSE_FORMATS:
            return _invalid("response_format must be one of 'base64', 'url'", "response_format")
        if body.get("output_format", "jpeg") not in _FORMATS:
            return _invalid("output_format must be one of 'jpeg', 'png'", "output_format")
        if "steps" in body and not isinstance(body["steps"], int):
            return _invalid("steps must be an integer", "steps")
        return None

    @staticmethod
    def _invalid_references(body: dict[str, Any], model: str) -> httpx.Response | None:
        references = body.get("reference_images", [])
        if "image_url" in body and model.startswith("google/"):
            return _invalid(f"{model} only supports reference_images", "image_url")
        if "image_url" in body and not isinstance(body["image_url"], str):
            return _invalid("image_url must be a string", "image_url")
        if not isinstance(references, list) or not all(
                isinstance(r, str) and r.startswith(("https://", "data:image/"))
                for r in references):
            return _invalid("reference_images must be a list of image URLs", "reference_images")
        return None

    def _safety(self, body: dict[str, Any]) -> httpx.Response | None:
        words = str(body["prompt"]).lower().split()
        if body.get("disable_safety_checker") or not any(w in words for w in self.flagged):
            return None
        return json_response(422, together_error(
            "Your request was flagged by the safety checker: NSFW content detected in the "
            "prompt. See https://docs.together.ai/docs/images-overview.",
            "invalid_request_error"))

    def _success(self, body: dict[str, Any]) -> httpx.Response:
        request_id = _request_id()
        data = []
        for index in range(int(body.get("n", 1))):
            raw = self.image_for(body, index)
            if body.get("response_format", "url") == "url":
                path = f"/v1/images/{request_id}-{index}"
                self.files[path] = raw
                data.append({"index": index, "url": f"https://{FILES_HOST}{path}", "type": "url"})
            else:
                data.append({"index": index, "b64_json": base64.b64encode(raw).decode("ascii"),
                             "type": "b64_json", "timings": {"inference": 0.799}})
        return json_response(200, {"id": request_id, "model": body["model"], "object": "list",
                                   "data": data})

    @staticmethod
    def image_for(body: dict[str, Any], index: int) -> bytes:
        """The image one request makes: its size, format and colours from the request."""
        return image_bytes(int(body.get("width", 1024)), int(body.get("height", 1024)),
                           str(body.get("output_format", "jpeg")),
                           f"{body['prompt']}|{body.get('seed')}|{index}")

    def _file(self, path: str) -> httpx.Response:
        if path not in self.files:
            return httpx.Response(404, content=b"Not Found", headers={"content-type": "text/plain"})
        data = self.files[path]
        mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        return httpx.Response(200, content=data, headers={"content-type": mime})

    def calls(self) -> list[Seen]:
        """The generation calls, without the downloads."""
        return [s for s in self.requests if s.url.host == API_HOST]
