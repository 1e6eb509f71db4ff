"""A fake Kie.ai: the market jobs API, its file-upload API and its file hosts, in Kie's own
wire format.

Kie wraps every answer in an envelope `{code, msg, data}` whose `code` carries the outcome
inside HTTP 200; the fake does the same unless a test scripts a raw HTTP error. Scripted per
test through constructor options: the states a task walks through (one step per recordInfo
GET), a failure's failCode/failMsg, replies that replace the create, poll or upload answers,
the result host, a replaced resultJson, and a delay before every API answer. Inputs are checked
against the documented schema of each model, and the file host refuses download agents it
does not like, as Kie's does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from proxy import geometry, imaging
from tests.fakes.replicate import Seen

API_HOST = "api.kie.ai"
UPLOAD_HOST = "kieai.redpandaai.co"
RESULT_HOST = "tempfile.aiquickdraw.com"
UPLOADED_HOST = "tempfile.redpandaai.co"
BASE_URL = f"https://{API_HOST}"
UPLOAD_URL = f"https://{UPLOAD_HOST}/api/file-base64-upload"

Reply = tuple[int, Any, dict[str, str]]

_RATIOS = ("1:1", "1:4", "1:8", "2:3", "3:2", "3:4", "4:1", "4:3", "4:5", "5:4", "8:1", "9:16",
           "16:9", "21:9", "auto")
# Each model's documented input: field -> allowed values (None: any), and required fields.
SCHEMAS: dict[str, tuple[dict[str, tuple[str, ...] | None], tuple[str, ...]]] = {
    "nano-banana-2": ({"prompt": None, "image_input": None, "aspect_ratio": _RATIOS,
                       "resolution": ("1K", "2K", "4K"), "output_format": ("jpg", "png"),
                       "google_search": None}, ("prompt",)),
    "nano-banana-pro": ({"prompt": None, "image_input": None, "aspect_ratio": _RATIOS[:-1],
                         "resolution": ("1K", "2K", "4K"), "output_format": ("jpg", "png")},
                        ("prompt",)),
    "google/nano-banana": ({"prompt": None, "image_size": _RATIOS,
                            "output_format": ("png", "jpeg")}, ("prompt",)),
    "google/nano-banana-edit": ({"prompt": None, "image_urls": None, "image_size": _RATIOS,
                                 "output_format": ("png", "jpeg")}, ("prompt", "image_urls")),
}
_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png"}


def envelope(code: int, msg: str, data: Any = None) -> Reply:
    """Kie's answer: the outcome in `code`, inside HTTP 200."""
    return 200, {"code": code, "msg": msg, "data": data}, {}


UNAUTHORIZED = envelope(401, "You do not have access permissions")
NO_CREDITS = envelope(402, "Credits insufficient. Top up at https://kie.ai/billing?k=secret")
NOT_FOUND = envelope(404, "recordInfo is null")
RATE_LIMITED = envelope(429, "The request frequency is too high, please try again later")
MAINTENANCE = envelope(455, "Service unavailable: the system is under maintenance")
SERVER_ERROR = envelope(500, "Server exception, please try again later")


@dataclass
class Task:
    id: str
    body: dict[str, Any]
    states: list[str]
    step: int = -1  # -1: created, not yet asked about
    answered: list[str] = field(default_factory=list)  # the state each poll returned

    @property
    def state(self) -> str:
        return self.states[max(self.step, 0)]

    @property
    def input(self) -> dict[str, Any]:
        return dict(self.body["input"])


@dataclass
class FakeKie(httpx.AsyncBaseTransport):
    """api.kie.ai (createTask, recordInfo), the upload API and the two temporary file hosts."""

    token: str = "test-key"
    states: Sequence[str] = ("waiting", "queuing", "generating", "success")
    success_state: str = "success"  # the state whose record carries resultJson
    fail_state: str = "fail"  # the state whose record carries failCode / failMsg
    fail_code: str | int | None = "501"  # Kie's "generation failed"
    fail_msg: str = "Internal error, please try again later."
    submit_reply: Reply | None = None  # replaces the createTask answer
    poll_replies: list[Reply] = field(default_factory=list)  # answered first, one per poll
    upload_reply: Reply | None = None
    result_json: Any = None  # replaces the `resultJson` of a successful task
    result_host: str = RESULT_HOST
    fetch_status: int = 200
    refused_agents: tuple[str, ...] = ("python-urllib",)  # the file host answers them 403
    delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)  # download URL -> uploaded bytes
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1765178625768))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        if request.url.host not in (API_HOST, UPLOAD_HOST):
            return self._file(request)
        await asyncio.sleep(self.delay_s)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _reply(UNAUTHORIZED)
        path = request.url.path
        if request.url.host == UPLOAD_HOST and (request.method, path) == (
                "POST", "/api/file-base64-upload"):
            return self._upload(body)
        if (request.method, path) == ("POST", "/api/v1/jobs/createTask"):
            return self._create(body)
        if (request.method, path) == ("GET", "/api/v1/jobs/recordInfo"):
            return self._record(request.url.params.get("taskId", ""))
        return _reply(envelope(404, "Not Found"))

    def _create(self, body: Any) -> httpx.Response:
        if self.submit_reply is not None:
            return _reply(self.submit_reply)
        body = body if isinstance(body, dict) else {}
        if (invalid := _invalid(body)) is not None:
            return _reply(envelope(422, invalid))
        model = str(body["model"])
        task = Task(f"task_{model.split('/')[-1]}_{next(self._ids)}", body, list(self.states))
        self.tasks[task.id] = task
        return _reply(envelope(200, "success", {"taskId": task.id}))

    def _record(self, task_id: str) -> httpx.Response:
        if self.poll_replies:
            return _reply(self.poll_replies.pop(0))
        task = self.tasks.get(task_id)
        if task is None:
            return _reply(NOT_FOUND)
        task.step = min(task.step + 1, len(task.states) - 1)
        task.answered.append(task.state)
        return _reply(envelope(200, "success", self._object(task)))

    def _object(self, task: Task) -> dict[str, Any]:
        """The task record, the same shape in every state (resultJson is a JSON string)."""
        state = task.state
        done = state in (self.success_state, self.fail_state)
        return {
            "taskId": task.id, "model": task.body["model"], "state": state,
            "param": orjson.dumps(task.body).decode(),
            "resultJson": self._result_json(task) if state == self.success_state else "",
            "failCode": self.fail_code if state == self.fail_state else None,
            "failMsg": self.fail_msg if state == self.fail_state else None,
            "costTime": 12000 if done else None, "completeTime": 1765178637768 if done else None,
            "createTime": 1765178625768, "updateTime": 1765178630768,
        }

    def _result_json(self, task: Task) -> Any:
        if self.result_json is not None:
            return self.result_json
        data, fmt = self.image_for(task.input)
        path = f"/h/{task.id}/{secrets.token_hex(4)}.{'jpg' if fmt == 'jpeg' else fmt}"
        self.files[path] = data
        return orjson.dumps({"resultUrls": [f"https://{self.result_host}{path}"]}).decode()

    @staticmethod
    def image_for(task_input: dict[str, Any]) -> tuple[bytes, str]:
        """The image a task makes: its shape from aspect_ratio (or image_size) and resolution."""
        fmt = _FORMATS.get(str(task_input.get("output_format", "jpg")), "jpeg")
        ratio = str(task_input.get("aspect_ratio", task_input.get("image_size", "1:1")))
        tier = str(task_input.get("resolution", "1K"))
        width, height = geometry.pixels(ratio if ratio != "auto" else "1:1", tier)
        return imaging.encode(width, height, fmt, str(task_input.get("prompt"))), fmt

    def _upload(self, body: Any) -> httpx.Response:
        if self.upload_reply is not None:
            return _reply(self.upload_reply)
        body = body if isinstance(body, dict) else {}
        if not body.get("uploadPath"):
            return _reply((200, {"success": False, "code": 400,
                                 "msg": "Missing required parameter: uploadPath"}, {}))
        header, _, encoded = str(body.get("base64Data", "")).rpartition(",")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if not data:
            return _reply((200, {"success": False, "code": 400,
                                 "msg": "Base64 decoding failed: Invalid Base64 format"}, {}))
        mime = header[5:].split(";")[0] if header.startswith("data:") else "image/png"
        name = f"{secrets.token_hex(6)}.{mime.split('/')[-1]}"
        url = f"https://{UPLOADED_HOST}/{secrets.token_hex(4)}/{body['uploadPath']}/{name}"
        self.uploads[url] = data
        return _reply((200, {"success": True, "code": 200, "msg": "File uploaded successfully",
                             "data": {"fileName": name, "filePath": f"{body['uploadPath']}/{name}",
                                      "downloadUrl": url, "fileSize": len(data),
                                      "mimeType": mime,
                                      "uploadedAt": "2026-11-20T10:00:00.000Z"}}, {}))

    def _file(self, request: httpx.Request) -> httpx.Response:
        agent = request.headers.get("user-agent", "").lower()
        if any(agent.startswith(refused) for refused in self.refused_agents):
            return httpx.Response(403, text="error code: 1010")
        data = self.files.get(request.url.path)
        if self.fetch_status != 200 or data is None:
            return httpx.Response(self.fetch_status if data else 404, text="Not Found")
        return httpx.Response(200, content=data,
                              headers={"content-type": f"image/{imaging.sniff(data)}"})

    def creates(self) -> list[Seen]:
        return [s for s in self.seen if s.url.path == "/api/v1/jobs/createTask"]

    def polls(self) -> list[Seen]:
        return [s for s in self.seen if s.url.path == "/api/v1/jobs/recordInfo"]


def _invalid(body: dict[str, Any]) -> str | None:
    """Kie's validation message for a body outside the model's documented schema, else None."""
    model = body.get("model")
    if model not in SCHEMAS:
        return f"model {model!r} is not supported"
    task_input = body.get("input")
    if not isinstance(task_input, dict):
        return "input is required"
    allowed, required = SCHEMAS[str(model)]
    for name in required:
        if not task_input.get(name):
            return f"{name} is required"
    for name, value in task_input.items():
        if name not in allowed:
            return f"{name} is not a valid parameter"
        if allowed[name] is not None and value not in (allowed[name] or ()):
            return f"{name} must be one of {list(allowed[name] or ())}"
    for url in task_input.get("image_input", []) + task_input.get("image_urls", []):
        if not str(url).startswith(("https://", "http://")):
            return "image_input must be a list of file URLs, not file content"
    return None


def _reply(reply: Reply) -> httpx.Response:
    status, body, headers = reply
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **headers})
