"""A fake Segmind: the v2 queue and v1 sync API on api.segmind.com and result files on
images.segmind.com, in Segmind's own wire format.

Scripted per test through constructor options: the states a job walks through (one step per
status GET), replies that replace the submit, status, result or v1 answers, a FAILED job's error
text, the result's shape (images[] + output URL, a data URI, bare base64, text only), whether v1
answers with bytes or JSON, a file host, a file download status, and a delay before every API
answer. Like Segmind, the key goes in `x-api-key` (a bearer token is refused), a POST without a
JSON content type is a 406, a submit is accepted before its input is checked, and a job whose
input is wrong ends FAILED, served under HTTP 422 on both the status and the result URL.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from proxy import geometry, imaging
from proxy.domain import ASPECT_RATIOS

API_HOST = "api.segmind.com"
FILES_HOST = "images.segmind.com"
BASE_URL = f"https://{API_HOST}"

Reply = tuple[int, Any, dict[str, str]]

MISSING_KEY: Reply = (401, {"error": "Missing Authorization or x-api-key in header"}, {})
INVALID_KEY: Reply = (401, {"error": "Unauthorized. API key is invalid or may have expired. "
                                     "Get a new key at https://cloud.segmind.com/console/api-keys"},
                      {})
INVALID_TOKEN: Reply = (401, {"error": "invalid_token", "status_code": 401,
                              "error_description": "Token is invalid or expired."}, {})
FORBIDDEN: Reply = (403, {"error": "You are not allowed to access this model"}, {})
NO_CREDITS: Reply = (406, {"error": "Insufficient credits. Your balance is 0.01 credits; this "
                                    "model needs 0.084 credits."}, {})
SPEND_LIMIT: Reply = (406, {"error": "Team spend limit reached: 50.00 USD per month"}, {})
BAD_CONTENT_TYPE: Reply = (406, "Invalid content type", {})
NOT_FOUND: Reply = (404, {"error": "Model not found"}, {})
GONE: Reply = (410, {"error": "This model has been deprecated"}, {})
THROTTLED: Reply = (429, {"error": "rate_limit_exceeded"},
                    {"x-rate-limit-reset-at-utc": "2026-11-20T10:00:30Z"})
METHOD_NOT_ALLOWED: Reply = (405, b"<html><body><h1>405 Method Not Allowed</h1></body></html>",
                             {"content-type": "text/html"})
PROMPT_MANDATORY = "Prompt is Mandatory and must be string"
BLOCKED = "Image generation blocked: the prompt was flagged by the safety filter (IMAGE_SAFETY)"

_FORMATS = {"jpg": "jpeg", "png": "png"}
RESOLUTIONS = ("1K", "2K", "4K")


@dataclass
class Seen:
    """One request the fake received, as sent."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    json: Any


@dataclass
class Job:
    id: str
    slug: str
    input: dict[str, Any]
    states: list[str]
    step: int = 0
    answered: list[str] = field(default_factory=list)  # the status each status GET returned

    @property
    def status(self) -> str:
        return self.states[self.step]


@dataclass
class FakeSegmind(httpx.AsyncBaseTransport):
    """Segmind's gateway (v2 submit, status, result; v1 sync) and its file host."""

    token: str = "test-key"
    states: Sequence[str] = ("QUEUED", "PROCESSING", "COMPLETED")
    error: str | None = None  # a FAILED job's `error` (else its input error, if any)
    submit_reply: Reply | None = None
    status_replies: list[Reply] = field(default_factory=list)  # answered first, one per GET
    result_reply: Reply | None = None
    v1_reply: Reply | None = None
    result_form: str = "images"  # "images" | "output" | "data" | "base64" | "text"
    text: str = "I can't help with that request."  # the `output` of result_form "text"
    v1_form: str = "bytes"  # "bytes" | "json"
    files_host: str = FILES_HOST
    fetch_status: int = 200
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        if request.url.host != API_HOST:
            return self._file(request)
        await self._wait(request)
        if (refused := self._refused(request)) is not None:
            return _reply(refused)
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and len(parts) == 2 and parts[0] in ("v1", "v2"):
            if request.headers.get("content-type") != "application/json":
                return _reply(BAD_CONTENT_TYPE)
            return self._v1(parts[1], body) if parts[0] == "v1" else self._submit(parts[1], body)
        if request.method != "GET":
            return _reply(METHOD_NOT_ALLOWED)
        job = self.jobs.get(parts[2]) if parts[:2] == ["v2", "requests"] and len(parts) > 2 \
            else None
        if job is None:
            return _reply((404, {"error": f"Request {parts[-1]} not found"}, {}))
        if parts[3:] == ["status"]:
            return self._status(job)
        return self._result(job) if len(parts) == 3 else _reply(NOT_FOUND)

    async def _wait(self, request: httpx.Request) -> None:
        """The scripted delay; past the client's read timeout the answer never comes, as on
        a real connection (httpx enforces that timeout in its network transport)."""
        read = (request.extensions.get("timeout") or {}).get("read")
        if read is not None and self.delay_s > read:
            await asyncio.sleep(read)
            raise httpx.ReadTimeout("timed out", request=request)
        await asyncio.sleep(self.delay_s)

    def _refused(self, request: httpx.Request) -> Reply | None:
        key = request.headers.get("x-api-key")
        if key is None:
            return INVALID_TOKEN if "authorization" in request.headers else MISSING_KEY
        return None if key == self.token else INVALID_KEY

    def _submit(self, slug: str, body: Any) -> httpx.Response:
        if self.submit_reply is not None:
            return _reply(self.submit_reply)
        job = Job(str(uuid.uuid4()), slug, body if isinstance(body, dict) else {},
                  list(self.states))
        self.jobs[job.id] = job
        return _reply((200, {"request_id": job.id, "status": "QUEUED",
                             "poll_url": f"{BASE_URL}/v1/requests/{job.id}", **self._urls(job)},
                       {}))

    def _status(self, job: Job) -> httpx.Response:
        if self.status_replies:
            return _reply(self.status_replies.pop(0))
        job.step = min(job.step + 1, len(job.states) - 1)
        failed = self._failure(job) if job.status == "COMPLETED" else None
        job.answered.append(job.status)
        if failed is not None:
            return _reply(failed)
        if job.status == "COMPLETED":
            return _reply((200, {"status": "COMPLETED", "request_id": job.id,
                                 "metrics": {"inference_time": 13.06}}, {}))
        if job.status == "FAILED":
            return _reply(self._failed(job, self.error or "Inference failed"))
        return _reply((200, {"status": job.status, "request_id": job.id, **self._urls(job),
                             "metrics": {}}, {}))

    def _result(self, job: Job) -> httpx.Response:
        if self.result_reply is not None:
            return _reply(self.result_reply)
        if job.status == "FAILED":
            return _reply(self._failed(job, self.error or "Inference failed"))
        if job.status != "COMPLETED":
            return _reply((200, {"status": job.status, "request_id": job.id, "metrics": {}}, {}))
        if (failed := self._failure(job)) is not None:
            return _reply(failed)
        return _reply((200, {"status": "COMPLETED", "request_id": job.id, "error": None,
                             **self._output(job), "metrics": _METRICS}, {}))

    def _failure(self, job: Job) -> Reply | None:
        """What a job that ran to the end failed of (the scripted error, or its bad input);
        the job is FAILED from then on."""
        problem = self.error or _invalid(job.input)
        return None if problem is None else self._failed(job, problem)

    def _failed(self, job: Job, error: str) -> Reply:
        job.states[job.step] = "FAILED"
        return (422, {"status": "FAILED", "request_id": job.id, "error": error,
                      "metrics": {"inference_time": 0.007, "queue_time": 0.23,
                                  "total_time": 0.24}}, {})

    def _v1(self, slug: str, body: Any) -> httpx.Response:
        if self.v1_reply is not None:
            return _reply(self.v1_reply)
        job = Job(str(uuid.uuid4()), slug, body if isinstance(body, dict) else {}, ["COMPLETED"])
        problem = self.error or _invalid(job.input)
        if problem is not None:
            return _reply((400, {"error": problem}, {}))
        headers = {"x-request-id": job.id, "x-cost": "0.084", "x-remaining-credits": "9.9"}
        if self.v1_form == "json":
            return _reply((200, {"status": "COMPLETED", **self._output(job)}, headers))
        data, fmt = self.image_for(job.input)
        return httpx.Response(200, content=data, headers={"content-type": f"image/{fmt}",
                                                          **headers})

    def _urls(self, job: Job) -> dict[str, str]:
        base = f"{BASE_URL}/v2/requests/{job.id}"
        return {"status_url": f"{base}/status", "response_url": base}

    def _output(self, job: Job) -> dict[str, Any]:
        """The finished body's image fields, in the scripted shape."""
        data, fmt = self.image_for(job.input)
        encoded = base64.b64encode(data).decode("ascii")
        if self.result_form == "data":
            return {"output": f"data:image/{fmt};base64,{encoded}"}
        if self.result_form == "base64":
            return {"image": encoded}
        if self.result_form == "text":
            return {"output": self.text}
        path = f"/outputs/{job.id}.{'jpg' if fmt == 'jpeg' else fmt}"
        self.files[path] = data
        url = f"https://{self.files_host}{path}"
        if self.result_form == "output":
            return {"output": url}
        return {"output": url, "seed": job.input.get("seed", 420875),
                "images": [{"url": url, "content_type": f"image/{fmt}",
                            "file_name": path.rsplit("/", 1)[1], "file_size": str(len(data))}]}

    @staticmethod
    def image_for(model_input: dict[str, Any]) -> tuple[bytes, str]:
        """The image a job makes: its size from aspect_ratio and output_resolution."""
        fmt = _FORMATS.get(str(model_input.get("output_format", "jpg")), "jpeg")
        ratio = str(model_input.get("aspect_ratio", "1:1"))
        tier = str(model_input.get("output_resolution", "1K"))
        width, height = geometry.pixels(ratio, tier)
        return imaging.encode(width, height, fmt, str(model_input.get("prompt"))), fmt

    def _file(self, request: httpx.Request) -> httpx.Response:
        data = self.files.get(request.url.path)
        if self.fetch_status != 200 or data is None:
            return httpx.Response(self.fetch_status if data else 404, text="Not Found")
        return httpx.Response(200, content=data,
                              headers={"content-type": f"image/{imaging.sniff(data)}"})

    def submits(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


_METRICS = {"cost": 0.084, "remaining_credits": 9.916, "inference_time": 13.06,
            "queue_time": 0.4, "total_time": 13.5}


def _invalid(args: dict[str, Any]) -> str | None:
    """The error a job with input outside nano-banana-2's documented schema fails with."""
    if not isinstance(args.get("prompt"), str) or not args["prompt"]:
        return PROMPT_MANDATORY
    checks = (("aspect_ratio", args.get("aspect_ratio", "1:1"), ASPECT_RATIOS),
              ("output_format", args.get("output_format", "jpg"), tuple(_FORMATS)),
              ("output_resolution", args.get("output_resolution", "1K"), RESOLUTIONS))
    for name, value, allowed in checks:
        if value not in allowed:
            return f"Validation error: {name} must be one of {list(allowed)}"
    images = args.get("image_urls", [])
    if not isinstance(images, list) or not all(
            isinstance(i, str) and i.startswith(("https://", "data:image/")) for i in images):
        return "Validation error: image_urls must be a list of image URLs"
    return None


def _reply(reply: Reply) -> httpx.Response:
    status, body, headers = reply
    if isinstance(body, bytes):
        return httpx.Response(status, content=body, headers=headers)
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers={"content-type": "text/plain",
                                                          **headers})
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **headers})
