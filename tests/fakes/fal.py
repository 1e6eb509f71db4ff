"""A fake fal: the queue API on queue.fal.run and result files on its CDN, in fal's wire format.

Scripted per test through constructor options: the status sequence (one step per status GET),
replies that replace the submit, status or result answers, extra fields on the COMPLETED
status, data-URI results, safety-checker flags, a CDN host, and a delay before every answer.
Like fal, queue URLs are keyed by the app id (never the sub-path), and input errors (checked
against the documented Nano Banana input schema) surface only when the result is fetched.
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

QUEUE_HOST = "queue.fal.run"
CDN_HOST = "v3.fal.media"
BASE_URL = f"https://{QUEUE_HOST}"

Reply = tuple[int, Any, dict[str, str]]

UNAUTHORIZED: Reply = (401, {"detail": "Cannot access application 'fal-ai/nano-banana-2'. "
                                       "Authentication is required to access this "
                                       "application."}, {})
PROMPT_MISSING: Reply = (422, {"detail": [{"loc": ["body", "prompt"], "msg": "field required",
                                           "type": "value_error.missing"}]}, {})
CONTENT_POLICY: Reply = (422, {"detail": [{
    "loc": ["body", "prompt"], "msg": "The content could not be processed because it "
                                      "contained material flagged by a content checker.",
    "type": "content_policy_violation", "url": "https://docs.fal.ai/errors#content_policy"}]},
    {"x-fal-retryable": "false"})
REQUEST_TIMEOUT: Reply = (504, {"detail": "Request timed out", "error_type": "request_timeout"},
                          {"x-fal-error-type": "request_timeout"})
NOT_FOUND: Reply = (404, {"detail": "Application not found"}, {})

_FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "webp": "webp"}
OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESOLUTIONS = ("0.5K", "1K", "2K", "4K")


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
    app: str
    endpoint: str
    arguments: dict[str, Any]
    states: list[str]
    step: int = 0
    canceled: bool = False
    answered: list[str] = field(default_factory=list)  # the status each status GET returned

    @property
    def status(self) -> str:
        return self.states[self.step]


@dataclass
class FakeFal(httpx.AsyncBaseTransport):
    """fal's queue (submit, status, result, cancel) and CDN."""

    token: str = "test-key"
    states: Sequence[str] = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    submit_reply: Reply | None = None
    status_replies: list[Reply] = field(default_factory=list)  # answered first, one per GET
    result_reply: Reply | None = None
    completed_extra: dict[str, Any] = field(default_factory=dict)
    data_uris: bool = False
    nsfw: bool = False
    omit_urls: bool = False  # a submit reply that carries only the request id
    cdn_host: str = CDN_HOST
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        if request.url.host != QUEUE_HOST:
            return self._file(request)
        await asyncio.sleep(self.delay_s)
        if request.headers.get("authorization") != f"Key {self.token}":
            return _reply(UNAUTHORIZED)
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST":
            return self._submit("/".join(parts), body)
        job = self.jobs.get(parts[3]) if len(parts) >= 4 and parts[2] == "requests" else None
        if job is None or "/".join(parts[:2]) != job.app:
            return _reply(NOT_FOUND)
        if request.method == "GET" and parts[4:] == ["status"]:
            return self._status(job)
        if request.method == "GET" and len(parts) == 4:
            return self._result(job)
        if request.method == "PUT" and parts[4:] == ["cancel"]:
            return self._cancel(job)
        return _reply(NOT_FOUND)

    def _submit(self, endpoint: str, body: Any) -> httpx.Response:
        if self.submit_reply is not None:
            return _reply(self.submit_reply)
        app = "/".join(endpoint.split("/")[:2])  # queue URLs are keyed by app, not sub-path
        job = Job(str(uuid.uuid4()), app, endpoint, body if isinstance(body, dict) else {},
                  list(self.states))
        self.jobs[job.id] = job
        reply: dict[str, Any] = {"request_id": job.id, "status": "IN_QUEUE", "queue_position": 0}
        if not self.omit_urls:
            reply.update(self._urls(job), cancel_url=f"{self._urls(job)['response_url']}/cancel")
        return _reply((200, reply, {}))

    def _urls(self, job: Job) -> dict[str, str]:
        base = f"{BASE_URL}/{job.app}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status"}

    def _status(self, job: Job) -> httpx.Response:
        if self.status_replies:
            return _reply(self.status_replies.pop(0))
        job.step = min(job.step + 1, len(job.states) - 1)
        job.answered.append(job.status)
        status: dict[str, Any] = {"status": job.status, "request_id": job.id,
                                  "response_url": self._urls(job)["response_url"]}
        if job.status == "IN_QUEUE":
            status["queue_position"] = 0
        else:
            status["logs"] = [{"message": "generating", "level": "INFO", "source": "USER",
                               "timestamp": "2026-11-20T10:00:01"}]
        if job.status == "COMPLETED":
            status.update(self.completed_extra)
        return _reply((200, status, {}))

    def _result(self, job: Job) -> httpx.Response:
        if job.status != "COMPLETED":
            return _reply((400, {"detail": "Request is still in progress"}, {}))
        if self.result_reply is not None:
            return _reply(self.result_reply)
        if (invalid := _invalid(job)) is not None:
            return _reply(invalid)
        images = [self._image(job, i) for i in range(int(job.arguments.get("num_images", 1)))]
        output: dict[str, Any] = {"images": images, "description": ""}
        if self.nsfw:
            output["has_nsfw_concepts"] = [True] * len(images)
        return _reply((200, output, {}))

    def _image(self, job: Job, index: int) -> dict[str, Any]:
        data, fmt, (width, height) = self.image_for(job.arguments, index)
        mime = f"image/{fmt}"
        if self.data_uris:
            url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        else:
            path = f"/files/rabbit/{job.id[:8]}-{index}.{fmt}"
            self.files[path] = data
            url = f"https://{self.cdn_host}{path}"
        return {"url": url, "content_type": mime, "file_name": f"output-{index}.{fmt}",
                "file_size": len(data), "width": width, "height": height}

    @staticmethod
    def image_for(arguments: dict[str, Any], index: int = 0
                  ) -> tuple[bytes, str, tuple[int, int]]:
        """The image a job makes: its size from aspect_ratio and resolution."""
        fmt = _FORMATS.get(str(arguments.get("output_format", "png")), "png")
        ratio = str(arguments.get("aspect_ratio", "1:1"))
        ratio = ratio if ":" in ratio else "1:1"
        tier = str(arguments.get("resolution", "1K"))
        size = geometry.pixels(ratio, tier if tier in ("0.5K", "1K", "2K", "4K") else "1K")
        seed = f"{arguments.get('prompt')}|{arguments.get('seed')}|{index}"
        return imaging.encode(*size, fmt, seed), fmt, size

    def _cancel(self, job: Job) -> httpx.Response:
        if job.status != "IN_QUEUE":
            return _reply((400, {"detail": "Request is already being processed"}, {}))
        job.canceled = True
        return _reply((202, {"status": "CANCELLATION_REQUESTED"}, {}))

    def _file(self, request: httpx.Request) -> httpx.Response:
        data = self.files.get(request.url.path)
        if data is None:
            return httpx.Response(404, text="Not Found")
        return httpx.Response(200, content=data,
                              headers={"content-type": f"image/{imaging.sniff(data)}"})

    def submits(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


def _invalid(job: Job) -> Reply | None:
    """fal's 422 for input outside the documented schema (t2i and /edit), else None."""
    args = job.arguments
    edit = job.endpoint.endswith("/edit")
    if not args.get("prompt"):
        return PROMPT_MISSING
    if edit and not args.get("image_urls"):
        return _input_error("image_urls", "field required", "value_error.missing")
    checks = (("num_images", args.get("num_images", 1), range(1, 5)),
              ("aspect_ratio", args.get("aspect_ratio", "auto" if edit else "1:1"),
               (*ASPECT_RATIOS, *(("auto",) if edit else ()))),
              ("output_format", args.get("output_format", "png"), OUTPUT_FORMATS),
              ("resolution", args.get("resolution", "1K"), RESOLUTIONS))
    for name, value, allowed in checks:
        if value not in allowed:
            return _input_error(name, f"Input should be one of {list(allowed)}", "one_of")
    return None


def _input_error(name: str, message: str, kind: str) -> Reply:
    return (422, {"detail": [{"loc": ["body", name], "msg": message, "type": kind,
                              "url": f"https://docs.fal.ai/errors#{kind}"}]}, {})


def _reply(reply: Reply) -> httpx.Response:
    status, body, headers = reply
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **headers})
