"""Fakes of four submit-and-poll hosts, each in its own wire format: Toapis, OpenOctopus,
NewportAI and ApiPass.

What each one speaks follows ../shared/providers/hosts.md §9, §10, §12 and §13, with that
page's tags: Toapis' paths, body and states are [C]; OpenOctopus' paths, states and result and
error fields [C], its submit fields beyond model and prompt [U]; NewportAI's poll call and reply
[C], its submit path [S] and body [U]; ApiPass has no public reference at all, so its fake is
the same best guess as its route configuration (a Kie-shaped task API with the states ApiPass
publishes) [U]. HTTP error bodies are [I] for every host.

Scripted per test through constructor options: the states a task walks through (in the host's
own values, one step per poll, the first one in the submit reply), a failed task's message and
code, replies that replace the submit or the next polls, the host result files are served
from, and the status of file downloads.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import orjson

from proxy import geometry, imaging
from proxy.domain import ASPECT_RATIOS

Reply = tuple[int, Any, dict[str, str]]
TIERS = ("1K", "2K", "4K")
_EXTENSIONS = {"png": "png", "jpeg": "jpg"}


class Invalid(Exception):
    """A submit body the host would refuse: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Seen:
    """One request the fake received, as sent; `kind` is submit, poll, fetch or other."""

    kind: str
    method: str
    url: httpx.URL
    headers: httpx.Headers
    json: Any


@dataclass
class Asked:
    """What a submit asked for, read from the host's own field names."""

    model: str
    prompt: str
    width: int
    height: int
    fmt: str = "png"
    images: list[str] = field(default_factory=list)
    callback: str | None = None


@dataclass
class Task:
    id: str
    asked: Asked
    states: list[Any]
    step: int = 0
    reported: list[Any] = field(default_factory=list)  # the state each poll answered

    @property
    def state(self) -> Any:
        return self.states[self.step]


@dataclass
class FakeTaskHost(httpx.AsyncBaseTransport):
    """The host's API on API_HOST and its result files on FILES_HOST (or `files_host`)."""

    API_HOST: ClassVar[str]
    FILES_HOST: ClassVar[str]
    STATES: ClassVar[tuple[Any, ...]]
    DONE: ClassVar[Any]
    FAILED: ClassVar[Any]

    token: str = "test-key"
    states: Sequence[Any] = ()  # empty: the host's usual sequence, STATES
    error: tuple[str, Any] = ("Generation failed: internal model error", None)  # message, code
    submit_reply: Reply | None = None
    poll_replies: list[Reply] = field(default_factory=list)  # answered first, one per poll
    files_host: str = ""
    fetch_status: int = 200
    seen: list[Seen] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body = orjson.loads(raw) if raw else None
        if request.url.host != self.API_HOST:
            self.seen.append(Seen("fetch", request.method, request.url, request.headers, body))
            return self._file(request)
        kind, task_id = self.which(request, body)
        self.seen.append(Seen(kind, request.method, request.url, request.headers, body))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _reply(self.http_error(401, "Invalid API key"))
        if kind == "submit":
            return self._submit(body)
        if kind == "poll":
            return self._poll(task_id)
        return _reply(self.http_error(404, "Not found"))

    def _submit(self, body: Any) -> httpx.Response:
        if self.submit_reply is not None:
            return _reply(self.submit_reply)
        try:
            asked = self.read(body if isinstance(body, dict) else {})
        except Invalid as exc:
            return _reply(self.http_error(exc.status, str(exc)))
        task = Task(self.new_id(), asked, list(self.states or self.STATES))
        self.tasks[task.id] = task
        return _reply((200, self.accepted(task), {}))

    def _poll(self, task_id: str | None) -> httpx.Response:
        if self.poll_replies:
            return _reply(self.poll_replies.pop(0))
        task = self.tasks.get(task_id or "")
        if task is None:
            return _reply(self.http_error(404, "Task not found"))
        task.step = min(task.step + 1, len(task.states) - 1)
        task.reported.append(task.state)
        return _reply((200, self.status(task), {}))

    def result_url(self, task: Task) -> str:
        """The task's image, made now and served from the files host."""
        path = f"/results/{task.id}.{_EXTENSIONS[task.asked.fmt]}"
        self.files[path] = self.image_for(task.asked)
        return f"https://{self.files_host or self.FILES_HOST}{path}"

    @staticmethod
    def image_for(asked: Asked) -> bytes:
        return imaging.encode(asked.width, asked.height, asked.fmt, asked.prompt)

    def _file(self, request: httpx.Request) -> httpx.Response:
        data = self.files.get(request.url.path)
        if data is None or self.fetch_status != 200:
            return httpx.Response(404 if data is None else self.fetch_status, text="Not Found")
        return httpx.Response(200, content=data,
                              headers={"content-type": f"image/{imaging.sniff(data)}"})

    def new_id(self) -> str:
        return secrets.token_hex(16)

    def task(self) -> Task:
        """The one task of a test that submitted one."""
        (task,) = self.tasks.values()
        return task

    def kinds(self) -> list[str]:
        return [s.kind for s in self.seen]

    # --- What each host defines ------------------------------------------------------------

    def which(self, request: httpx.Request, body: Any) -> tuple[str, str | None]:
        """submit, poll (with the task id asked about) or other."""
        raise NotImplementedError

    def read(self, body: dict[str, Any]) -> Asked:
        """The submit body in the host's field names; Invalid where the host would refuse."""
        raise NotImplementedError

    def accepted(self, task: Task) -> Any:
        raise NotImplementedError

    def status(self, task: Task) -> Any:
        raise NotImplementedError

    def http_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                   code: Any = None) -> Reply:
        raise NotImplementedError

    def envelope_error(self, code: Any, message: str) -> Reply:
        """A refusal inside HTTP 200, for hosts whose replies carry their own code."""
        raise NotImplementedError


def _ratio_size(ratio: Any, tier: Any) -> tuple[int, int]:
    if ratio not in ASPECT_RATIOS:
        raise Invalid(400, f"unsupported aspect ratio {ratio!r}")
    if tier not in TIERS:
        raise Invalid(400, f"unsupported resolution {tier!r}")
    return geometry.pixels(str(ratio), str(tier))


def _urls(value: Any, name: str, limit: int = 14) -> list[str]:
    """Reference images as public URLs only, as these hosts take them."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise Invalid(400, f"{name} must be a list of at most {limit} URLs")
    if not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in value):
        raise Invalid(400, f"{name}: base64 images are not accepted, pass image URLs")
    return list(value)


def _prompt(body: dict[str, Any], limit: int = 20000) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise Invalid(400, "prompt is required")
    if len(prompt) > limit:
        raise Invalid(400, f"prompt must be at most {limit} characters")
    return prompt


@dataclass
class FakeToapis(FakeTaskHost):
    """Toapis (§9): POST /v1/images/generations, GET /v1/images/generations/{task_id}."""

    API_HOST: ClassVar[str] = "toapis.com"
    FILES_HOST: ClassVar[str] = "files.toapis.com"  # [I] the result host is not documented
    STATES: ClassVar[tuple[Any, ...]] = ("queued", "in_progress", "completed")
    DONE: ClassVar[Any] = "completed"
    FAILED: ClassVar[Any] = "failed"

    def which(self, request: httpx.Request, body: Any) -> tuple[str, str | None]:
        path = request.url.path
        if request.method == "POST" and path == "/v1/images/generations":
            return "submit", None
        if request.method == "GET" and path.startswith("/v1/images/generations/"):
            return "poll", path.rsplit("/", 1)[1]
        return "other", None

    def read(self, body: dict[str, Any]) -> Asked:
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4:
            raise Invalid(400, "n must be a bare number from 1 to 4")
        metadata = body.get("metadata") or {}
        width, height = _ratio_size(body.get("size", "1:1"), metadata.get("resolution", "1K"))
        return Asked(str(body.get("model") or ""), _prompt(body, 1000), width, height,
                     images=_urls(body.get("image_urls"), "image_urls"))

    def accepted(self, task: Task) -> Any:
        return {"id": f"task_img_{task.id}", "object": "generation.task",
                "model": task.asked.model, "status": task.states[0], "progress": 0,
                "created_at": 1703884800, "metadata": {}}

    def new_id(self) -> str:
        return secrets.token_hex(6)

    def _poll(self, task_id: str | None) -> httpx.Response:
        return super()._poll((task_id or "").removeprefix("task_img_"))

    def status(self, task: Task) -> Any:
        progress = {"completed": 100, "failed": 100, "in_progress": 50}.get(task.state, 0)
        reply: dict[str, Any] = {"id": f"task_img_{task.id}", "object": "generation.task",
                                 "model": task.asked.model, "status": task.state,
                                 "progress": progress, "created_at": 1703884800}
        if task.state == self.DONE:
            url = self.result_url(task)
            reply.update(url=url, expires_at=1703971200, completed_at=1703884812,
                         result={"type": "image", "url": url})
        elif task.state == self.FAILED:
            message, code = self.error
            reply["error"] = {"message": message, "code": code}
        return reply

    def http_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                   code: Any = None) -> Reply:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "api_error")
        return status, {"error": {"message": message, "type": kind, "code": code}}, headers or {}


@dataclass
class FakeOpenOctopus(FakeTaskHost):
    """OpenOctopus (§10): POST /v1/images/generations queues a task, GET /v1/tasks/{id}."""

    API_HOST: ClassVar[str] = "api.openoctopus.com"
    FILES_HOST: ClassVar[str] = "cdn.openoctopus.com"  # [I]
    STATES: ClassVar[tuple[Any, ...]] = ("queued", "processing", "succeeded")
    DONE: ClassVar[Any] = "succeeded"
    FAILED: ClassVar[Any] = "failed"

    def which(self, request: httpx.Request, body: Any) -> tuple[str, str | None]:
        path = request.url.path
        if request.method == "POST" and path == "/v1/images/generations":
            return "submit", None
        if request.method == "GET" and path.startswith("/v1/tasks/"):
            return "poll", path.rsplit("/", 1)[1]
        return "other", None

    def read(self, body: dict[str, Any]) -> Asked:
        model = body.get("model")
        if not isinstance(model, str) or not model.startswith("openoctopus/"):
            raise Invalid(400, "model must be an openoctopus/<slug> id")
        try:  # [U] size, n and image_urls: OpenAI-shaped guesses
            width, height = geometry.parse_size(str(body.get("size", "1024x1024")))
        except ValueError:
            raise Invalid(400, "size must be WIDTHxHEIGHT") from None
        if body.get("n", 1) != 1:
            raise Invalid(400, "n must be 1")
        return Asked(model, _prompt(body), width, height,
                     images=_urls(body.get("image_urls"), "image_urls"))

    def accepted(self, task: Task) -> Any:
        return {"id": task.id, "type": "image", "model": task.asked.model,
                "status": task.states[0], "output_payload": None}

    def status(self, task: Task) -> Any:
        reply: dict[str, Any] = {"id": task.id, "type": "image", "model": task.asked.model,
                                 "status": task.state, "output_payload": None, "error": None,
                                 "error_message": None}
        if task.state == self.DONE:
            reply["output_payload"] = {"assets": [self.result_url(task)]}
        elif task.state in (self.FAILED, "cancelled"):
            message, code = self.error
            reply.update(error={"message": message, "code": code}, error_message=message)
        return reply

    def http_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                   code: Any = None) -> Reply:
        return status, {"error": {"message": message, "code": code}}, headers or {}


@dataclass
class FakeNewportAI(FakeTaskHost):
    """NewportAI (§12): POST /api/async/{task type}; POST /api/getAsyncResult {"taskId"}."""

    API_HOST: ClassVar[str] = "api.newportai.com"
    FILES_HOST: ClassVar[str] = "dreamface-resource-new.s3.amazonaws.com"  # the docs' example
    STATES: ClassVar[tuple[Any, ...]] = (1, 2, 3)
    DONE: ClassVar[Any] = 3
    FAILED: ClassVar[Any] = 4

    def which(self, request: httpx.Request, body: Any) -> tuple[str, str | None]:
        path = request.url.path
        if request.method == "POST" and path == "/api/getAsyncResult":
            return "poll", str((body or {}).get("taskId"))
        if request.method == "POST" and path.startswith("/api/async/"):
            return "submit", None
        return "other", None

    def read(self, body: dict[str, Any]) -> Asked:  # [U] the fields are a guess
        width, height = _ratio_size(body.get("aspectRatio", "1:1"), body.get("resolution", "1K"))
        return Asked("", _prompt(body), width, height,
                     images=_urls(body.get("imageUrls"), "imageUrls"))

    def accepted(self, task: Task) -> Any:
        return {"code": 0, "message": "success", "data": {"taskId": task.id}}

    def status(self, task: Task) -> Any:
        failed = task.state == self.FAILED
        images = [{"imageUrl": self.result_url(task), "imageType": "png"}] \
            if task.state == self.DONE else []
        return {"code": 0, "message": "success", "data": {
            "task": {"taskId": task.id, "status": task.state,
                     "reason": self.error[0] if failed else "", "taskType": "nano_banana_2"},
            "images": images, "videos": [], "audios": []}}

    def http_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                   code: Any = None) -> Reply:
        return status, {"code": status if code is None else code, "message": message,
                        "data": None}, headers or {}

    def envelope_error(self, code: Any, message: str) -> Reply:
        return 200, {"code": code, "message": message, "data": None}, {}


@dataclass
class FakeApiPass(FakeTaskHost):
    """ApiPass (§13) [U]: POST /api/v1/jobs/createTask, GET /api/v1/jobs/recordInfo?taskId=."""

    API_HOST: ClassVar[str] = "api.apipass.invalid"
    FILES_HOST: ClassVar[str] = "files.apipass.invalid"
    STATES: ClassVar[tuple[Any, ...]] = ("queuing", "processing", "success")
    DONE: ClassVar[Any] = "success"
    FAILED: ClassVar[Any] = "fail"

    def which(self, request: httpx.Request, body: Any) -> tuple[str, str | None]:
        path = request.url.path
        if request.method == "POST" and path == "/api/v1/jobs/createTask":
            return "submit", None
        if request.method == "GET" and path == "/api/v1/jobs/recordInfo":
            return "poll", request.url.params.get("taskId")
        return "other", None

    def read(self, body: dict[str, Any]) -> Asked:
        given = body.get("input")
        if not isinstance(given, dict):
            raise Invalid(422, "input is required")
        ratio = given.get("aspect_ratio", "1:1")
        width, height = _ratio_size("1:1" if ratio == "auto" else ratio,
                                    given.get("resolution", "1K"))
        fmt = {"png": "png", "jpg": "jpeg"}.get(given.get("output_format", "png"))
        if fmt is None:
            raise Invalid(422, "output_format must be png or jpg")
        return Asked(str(body.get("model") or ""), _prompt(given), width, height, fmt,
                     _urls(given.get("image_input"), "image_input"), body.get("callBackUrl"))

    def accepted(self, task: Task) -> Any:
        return {"code": 200, "msg": "success", "data": {"taskId": task.id}}

    def status(self, task: Task) -> Any:
        done, failed = task.state == self.DONE, task.state == self.FAILED
        result = orjson.dumps({"resultUrls": [self.result_url(task)]}).decode() if done else ""
        message, code = self.error
        return {"code": 200, "msg": "success", "data": {
            "taskId": task.id, "model": task.asked.model, "state": task.state,
            "param": orjson.dumps({"model": task.asked.model}).decode(), "resultJson": result,
            "failCode": code if failed else None, "failMsg": message if failed else None,
            "costTime": 12000 if done else None, "createTime": 1757584164490,
            "completeTime": 1757584176490 if done or failed else None,
            "updateTime": 1757584176490}}

    def http_error(self, status: int, message: str, headers: dict[str, str] | None = None,
                   code: Any = None) -> Reply:
        return status, {"code": status if code is None else code, "msg": message}, headers or {}

    def envelope_error(self, code: Any, message: str) -> Reply:
        return 200, {"code": code, "msg": message, "data": None}, {}


def _reply(reply: Reply) -> httpx.Response:
    status, body, headers = reply
    return httpx.Response(status, content=orjson.dumps(body),
                          headers={"content-type": "application/json", **headers})
