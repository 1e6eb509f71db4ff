"""A fake WaveSpeed AI: the v3 predictions API, media upload and its output CDN, in WaveSpeed's
own wire format (every answer an envelope `{"code", "message", "data"}`).

Scripted per test through constructor options: the states a prediction walks through (one
step per result GET), a failed prediction's error text and `code`, the output form (URL, data
URI, bare base64, none), NSFW flags, replies that replace the submit, upload or result answers,
the CDN host, and a delay before every API answer. Like WaveSpeed, a failed prediction is an
HTTP 200, and input outside the documented Nano Banana schema is a 400 at submit.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from proxy import geometry, imaging
from proxy.domain import ASPECT_RATIOS

API_HOST = "api.wavespeed.ai"
CDN_HOST = "d1q70pf5vjeyhc.cloudfront.net"
BASE_URL = f"https://{API_HOST}/api/v3"

Reply = tuple[int, Any, dict[str, str]]

UNAUTHORIZED: Reply = (401, {"code": 401, "message": "Unauthorized: invalid API key",
                             "data": None}, {})
TOP_UP: Reply = (401, {"code": 401, "message": "API key is not activated, please top up your "
                                               "account at https://wavespeed.ai/top-up",
                       "data": None}, {})
SUSPENDED: Reply = (403, {"code": 403, "message": "Forbidden: account suspended",
                          "data": None}, {})
TOO_MANY: Reply = (429, {"code": 429, "message": "Too Many Requests", "data": None},
                   {"retry-after": "7"})
NOT_FOUND: Reply = (404, {"code": 404, "message": "model not found", "data": None}, {})

RESOLUTIONS = {"0.5k": "0.5K", "1k": "1K", "2k": "2K", "4k": "4K"}
OUTPUT_FORMATS = ("png", "jpeg")


@dataclass
class Seen:
    """One request the fake received, as sent (`json` for JSON bodies, `files` for uploads)."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    json: Any
    files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)


@dataclass
class Prediction:
    id: str
    model: str
    input: dict[str, Any]
    states: list[str]
    step: int = 0
    answered: list[str] = field(default_factory=list)  # the status each result GET returned

    @property
    def status(self) -> str:
        return self.states[self.step]


@dataclass
class FakeWaveSpeed(httpx.AsyncBaseTransport):
    """WaveSpeed's API on api.wavespeed.ai and output files on its CDN."""

    token: str = "test-key"
    states: Sequence[str] = ("created", "processing", "completed")
    completed: str = "completed"  # the state that carries outputs
    error: str = "Internal error"  # the `error` of a failed prediction
    error_code: int | None = None  # its `code` (wavespeed.ai/docs/error-codes)
    output: str = "url"  # "url" | "data" | "base64" | "none"
    nsfw: Sequence[bool] = ()
    submit_reply: Reply | None = None
    upload_reply: Reply | None = None
    result_replies: list[Reply] = field(default_factory=list)  # answered first, one per GET
    urls_get: str | None = None  # replaces data.urls.get in the submit answer ({id} filled)
    cdn_host: str = CDN_HOST
    fetch_status: int = 200
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        seen = Seen(request.method, request.url, request.headers, None)
        if request.headers.get("content-type", "").startswith("multipart/"):
            seen.files = _multipart(request.headers["content-type"], raw)
        elif raw:
            seen.json = orjson.loads(raw)
        self.seen.append(seen)
        if request.url.host != API_HOST:
            return self._file(request)
        await asyncio.sleep(self.delay_s)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _reply(UNAUTHORIZED)
        path = request.url.path.removeprefix("/api/v3/")
        parts = path.split("/")
        if request.method == "POST" and path == "media/upload/binary":
            return self._upload(seen)
        if request.method == "POST":
            return self._submit(path, seen.json)
        if request.method == "GET" and parts[0] == "predictions" and len(parts) in (2, 3) \
                and parts[2:] in ([], ["result"]):
            return self._result(parts[1])
        return _reply(NOT_FOUND)

    def _submit(self, model: str, body: Any) -> httpx.Response:
        if self.submit_reply is not None:
            return _reply(self.submit_reply)
        body = body if isinstance(body, dict) else {}
        if (invalid := _invalid(model, body)) is not None:
            return _reply(invalid)
        prediction = Prediction(uuid.uuid4().hex, model, body, list(self.states))
        self.predictions[prediction.id] = prediction
        data = self._data(prediction)
        url = self.urls_get or f"{BASE_URL}/predictions/{{id}}/result"
        data["urls"] = {"get": url.replace("{id}", prediction.id)}
        return _reply((200, {"code": 200, "message": "success", "data": data}, {}))

    def _result(self, prediction_id: str) -> httpx.Response:
        if self.result_replies:
            return _reply(self.result_replies.pop(0))
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return _reply((404, {"code": 404, "message": "prediction not found",
                                 "data": None}, {}))
        prediction.step = min(prediction.step + 1, len(prediction.states) - 1)
        prediction.answered.append(prediction.status)
        return _reply((200, {"code": 200, "message": "success",
                             "data": self._data(prediction)}, {}))

    def _data(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction object as the result endpoint shows it in every state."""
        status = prediction.status
        done = status == self.completed
        outputs = self._outputs(prediction) if done else []
        data: dict[str, Any] = {
            "id": prediction.id, "model": prediction.model, "status": status,
            "outputs": outputs, "has_nsfw_contents": list(self.nsfw) if done else [],
            "created_at": "2026-11-20T10:00:00.000Z", "error": "",
            "timings": {"inference": 2500 if done else 0},
        }
        if status == "failed":
            data["error"] = self.error
            if self.error_code is not None:
                data["code"] = self.error_code
        return data

    def _outputs(self, prediction: Prediction) -> list[str]:
        data, fmt = self.image_for(prediction.input)
        if self.output == "none":
            return []
        if self.output in ("data", "base64"):
            text = base64.b64encode(data).decode("ascii")
            return [f"data:image/{fmt};base64,{text}" if self.output == "data" else text]
        path = f"/predictions/{prediction.id}/1.{fmt}"
        self.files[path] = data
        return [f"https://{self.cdn_host}{path}"]

    @staticmethod
    def image_for(model_input: dict[str, Any]) -> tuple[bytes, str]:
        """The image a prediction makes: its size from aspect_ratio and resolution."""
        fmt = str(model_input.get("output_format", "png"))
        ratio = str(model_input.get("aspect_ratio", "1:1"))
        tier = RESOLUTIONS.get(str(model_input.get("resolution", "1k")), "1K")
        width, height = geometry.pixels(ratio, tier)
        return imaging.encode(width, height, fmt, str(model_input.get("prompt"))), fmt

    def _upload(self, seen: Seen) -> httpx.Response:
        if self.upload_reply is not None:
            return _reply(self.upload_reply)
        if "file" not in seen.files:
            return _reply((400, {"code": 400, "message": "file is required", "data": None}, {}))
        filename, mime, data = seen.files["file"]
        if not mime.startswith("image/"):
            return _reply((400, {"code": 400, "message": "unsupported file type",
                                 "data": None}, {}))
        path = f"/media/images/{uuid.uuid4().hex[:12]}-{filename}"
        self.files[path] = data
        return _reply((200, {"code": 200, "message": "success", "data": {
            "type": "image", "download_url": f"https://{self.cdn_host}{path}",
            "filename": filename, "size": len(data)}}, {}))

    def _file(self, request: httpx.Request) -> httpx.Response:
        data = self.files.get(request.url.path)
        if self.fetch_status != 200 or data is None:
            return httpx.Response(self.fetch_status if data else 404, text="Not Found")
        return httpx.Response(200, content=data,
                              headers={"content-type": f"image/{imaging.sniff(data)}"})

    def submits(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.json is not None]

    def uploads(self) -> list[Seen]:
        return [s for s in self.seen if s.url.path.endswith("/media/upload/binary")]


def _invalid(model: str, body: dict[str, Any]) -> Reply | None:
    """WaveSpeed's 400 for input outside the documented Nano Banana schema, else None."""
    edit = model.endswith("/edit")
    if not (edit or model.endswith("/text-to-image")):
        return NOT_FOUND
    if not body.get("prompt"):
        return _bad("prompt is required")
    if edit and not body.get("images"):
        return _bad("images is required")
    checks = (("aspect_ratio", body.get("aspect_ratio", "1:1"), ASPECT_RATIOS),
              ("resolution", body.get("resolution", "1k"), tuple(RESOLUTIONS)),
              ("output_format", body.get("output_format", "png"), OUTPUT_FORMATS))
    for name, value, allowed in checks:
        if value not in allowed:
            return _bad(f"{name} must be one of {list(allowed)}")
    return None


def _bad(message: str) -> Reply:
    return (400, {"code": 400, "message": message, "data": None}, {})


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str, str, bytes]]:
    """Form parts by field name: (filename, content type, bytes)."""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
    parts = {}
    for part in message.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and not part.is_multipart():
            name = str(part.get_param("name", header="content-disposition"))
            parts[name] = (str(part.get_filename()), part.get_content_type(), payload)
    return parts


def _reply(reply: Reply) -> httpx.Response:
    """A JSON answer; bytes go as they are (a gateway's HTML error page)."""
    status, body, headers = reply
    if isinstance(body, bytes):
        return httpx.Response(status, content=body, headers={"content-type": "text/html",
                                                             **headers})
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **headers})
