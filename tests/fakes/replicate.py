"""A fake Replicate: the predictions API and its file host, in Replicate's own wire format.

Scripted per test through constructor options: the states a prediction walks through (one
step per GET), whether `Prefer: wait` finishes it, the output form (URL, data URI, list), a
failure's error text, error replies for the create call, for polls and for the file download,
and a delay before every API answer.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from proxy import geometry, imaging

API_HOST = "api.replicate.com"
FILES_HOST = "replicate.delivery"
BASE_URL = f"https://{API_HOST}/v1"

Reply = tuple[int, Any, dict[str, str]]

UNAUTHENTICATED: Reply = (401, {"title": "Unauthenticated", "status": 401,
                                "detail": "You did not pass a valid authentication token"}, {})
NO_CREDIT: Reply = (402, {"title": "Insufficient credit", "status": 402,
                          "detail": "You have insufficient credit to run this model. Go to "
                                    "https://replicate.com/account/billing#billing to purchase "
                                    "credit."}, {})
INVALID_INPUT: Reply = (422, {
    "title": "Input validation failed", "status": 422,
    "detail": "- input.aspect_ratio: aspect_ratio must be one of the following: "
              "\"match_input_image\", \"1:1\", \"16:9\"\n",
    "invalid_fields": [{"type": "enum", "field": "input.aspect_ratio",
                        "description": "aspect_ratio must be one of the following"}]}, {})
THROTTLED: Reply = (429, {"detail": "Request was throttled. Your rate limit resets in ~30s.",
                          "status": 429}, {})
NOT_FOUND: Reply = (404, {"title": "Not found", "detail": "The requested resource could not be "
                                                          "found.", "status": 404}, {})

_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}


@dataclass
class Seen:
    """One request the fake received, as sent."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    json: Any


@dataclass
class Prediction:
    id: str
    input: dict[str, Any]
    states: list[str]
    step: int = 0
    canceled: bool = False

    @property
    def status(self) -> str:
        return "canceled" if self.canceled else self.states[self.step]


@dataclass
class FakeReplicate(httpx.AsyncBaseTransport):
    """Replicate's API on api.replicate.com and output files on replicate.delivery."""

    token: str = "test-key"
    states: Sequence[str] = ("starting", "processing", "succeeded")
    wait_finishes: bool = False  # `Prefer: wait` returns the final state at once
    output: str = "url"  # "url" | "data" | "list" | "none"
    error: str | None = None  # the `error` text of a failed prediction
    submit_reply: Reply | None = None  # replaces the create call's answer
    poll_replies: list[Reply] = field(default_factory=list)  # answered first, one per GET
    fetch_status: int = 200
    output_host: str = FILES_HOST
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        if request.url.host != API_HOST:
            return self._file(request)
        await asyncio.sleep(self.delay_s)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _reply(UNAUTHENTICATED)
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts[-1] == "cancel":
            return self._cancel(parts[2])
        if request.method == "POST" and parts[-1] == "predictions":
            return self._create(request, parts, body)
        if request.method == "GET" and parts[:2] == ["v1", "predictions"] and len(parts) == 3:
            return self._get(parts[2])
        return _reply(NOT_FOUND)

    def _create(self, request: httpx.Request, parts: list[str], body: Any) -> httpx.Response:
        if self.submit_reply is not None:
            return _reply(self.submit_reply)
        body = body if isinstance(body, dict) else {}
        if parts[1] == "predictions" and ("model" in body or "version" not in body):
            return _reply((422, {"title": "Input validation failed", "status": 422,
                                 "detail": "- version is required\n- Additional property "
                                           "model is not allowed\n"}, {}))
        if not isinstance(body.get("input"), dict) or not body["input"].get("prompt"):
            return _reply((422, {"title": "Input validation failed", "status": 422,
                                 "detail": "- input: prompt is required\n"}, {}))
        prediction = Prediction(secrets.token_hex(10), body["input"], list(self.states))
        if self.wait_finishes and request.headers.get("prefer", "").startswith("wait"):
            prediction.step = len(prediction.states) - 1
        self.predictions[prediction.id] = prediction
        return _reply((201, self._object(prediction), {}))

    def _get(self, prediction_id: str) -> httpx.Response:
        if self.poll_replies:
            return _reply(self.poll_replies.pop(0))
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return _reply(NOT_FOUND)
        prediction.step = min(prediction.step + 1, len(prediction.states) - 1)
        return _reply((200, self._object(prediction), {}))

    def _cancel(self, prediction_id: str) -> httpx.Response:
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return _reply(NOT_FOUND)
        prediction.canceled = True
        return _reply((200, self._object(prediction), {}))

    def _object(self, prediction: Prediction) -> dict[str, Any]:
        """The prediction object, the same shape in every state."""
        status = prediction.status
        url = f"https://{API_HOST}/v1/predictions/{prediction.id}"
        done = status in ("succeeded", "failed", "canceled")
        return {
            "id": prediction.id, "model": "google/nano-banana-2", "version": "hidden",
            "input": prediction.input, "logs": "", "data_removed": False,
            "output": self._output(prediction) if status == "succeeded" else None,
            "error": (self.error or "Prediction failed") if status == "failed" else None,
            "status": status, "created_at": "2026-11-20T10:00:00.000000Z",
            "started_at": None if status == "starting" else "2026-11-20T10:00:01.000000Z",
            "completed_at": "2026-11-20T10:00:09.000000Z" if done else None,
            "metrics": {"predict_time": 8.1, "total_time": 9.0} if done else {},
            "urls": {"get": url, "cancel": f"{url}/cancel",
                     "web": f"https://replicate.com/p/{prediction.id}"},
        }

    def _output(self, prediction: Prediction) -> Any:
        data, fmt = self.image_for(prediction.input)
        if self.output == "none":
            return None
        if self.output == "data":
            return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"
        path = f"/xezq/{prediction.id}/tmp{prediction.id[:6]}.{'jpg' if fmt == 'jpeg' else fmt}"
        self.files[path] = data
        url = f"https://{self.output_host}{path}"
        return [url] if self.output == "list" else url

    @staticmethod
    def image_for(model_input: dict[str, Any]) -> tuple[bytes, str]:
        """The image a prediction makes: its size from aspect_ratio and resolution."""
        fmt = _FORMATS.get(str(model_input.get("output_format", "jpg")), "jpeg")
        ratio = str(model_input.get("aspect_ratio", "1:1"))
        ratio = ratio if ":" in ratio else "1:1"
        tier = str(model_input.get("resolution", "1K"))
        width, height = geometry.pixels(ratio, tier if tier in ("1K", "2K", "4K") else "1K")
        return imaging.encode(width, height, fmt, str(model_input.get("prompt"))), fmt

    def _file(self, request: httpx.Request) -> httpx.Response:
        data = self.files.get(request.url.path)
        if self.fetch_status != 200 or data is None:
            return httpx.Response(self.fetch_status if data else 404, text="Not Found")
        mime = f"image/{imaging.sniff(data)}"
        return httpx.Response(200, content=data, headers={"content-type": mime})

    def creates(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.url.path.endswith("predictions")]


def _reply(reply: Reply) -> httpx.Response:
    status, body, headers = reply
    kind = "application/problem+json" if status >= 400 else "application/json"
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": kind, **headers})
