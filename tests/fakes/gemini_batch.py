"""A fake Gemini Batch API: batchGenerateContent, batches.get, batches.list and batches.cancel.

It speaks the wire format of ../shared/providers/openai-gemini-openrouter.md §2.7. A create is
checked for its path, x-goog-api-key and body shape, and answers an Operation (`batches/…`, its
state in `metadata`); each get moves the batch one state on (PENDING, RUNNING, SUCCEEDED, or the
`states` a test gives; `hold` keeps it where it is). When a batch succeeds, its inline requests
are answered by a FakeGemini (`fake.inner`), so per-request outcomes are scripted there
(`fake.inner.then("image_safety")`); an error reply becomes the item's google.rpc.Status `error`
with its gRPC code. The list pages every batch, newest first [U], without inlined responses (as
Google's does). `fake.creates` counts submits; `fail_create` / `fail_polls` script error replies.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.fakes.gemini import GEMINI_HOST, MODELS, FakeGemini, Seen, error, error_info

GEMINI_BASE = f"https://{GEMINI_HOST}/v1beta"
WALK = ("PENDING", "RUNNING", "SUCCEEDED")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
# google.rpc.Code of each status an inner generateContent error can carry.
GRPC = {"INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "PERMISSION_DENIED": 7,
        "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14,
        "UNAUTHENTICATED": 16}
FAILED_ERROR = {"code": 13, "message": "Batch failed: an internal error has occurred."}
_CREATE = re.compile(r"^/v1beta/models/([^/:]+):batchGenerateContent$")
_BATCH = re.compile(r"^/v1beta/(batches/[A-Za-z0-9_-]+)(:cancel)?$")

CREATE_ERRORS = {
    "invalid_argument": lambda: error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. "
                                      "Unknown name \"priority\" at 'batch': Cannot find field."),
    "rate_limited": lambda: error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota "
                                  "of enqueued batch tokens.", [
                                      {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                       "retryDelay": "53s"}]),
    "unavailable": lambda: error(503, "UNAVAILABLE", "The service is currently unavailable."),
}
POLL_ERRORS = {
    "unavailable": lambda: error(503, "UNAVAILABLE", "The service is currently unavailable."),
    "internal": lambda: error(500, "INTERNAL", "An internal error has occurred."),
    "not_found": lambda: error(404, "NOT_FOUND", "Requested entity was not found."),
}


@dataclass
class Batch:
    name: str
    model: str
    display_name: str
    requests: list[dict[str, Any]]
    states: list[str]
    step: int = 0
    output: list[dict[str, Any]] | None = None
    answered: list[str] = field(default_factory=list)  # the state each get returned

    @property
    def state(self) -> str:
        return self.states[self.step]


class FakeGeminiBatch(httpx.AsyncBaseTransport):
    def __init__(self, *, api_key: str = "test-key", states: tuple[str, ...] = WALK,
                 page_size: int = 100, failed_error: dict[str, Any] | None = None) -> None:
        self.api_key = api_key
        self.states = states
        self.page_size = page_size  # the most batches one list page holds, whatever is asked
        self.failed_error = failed_error or FAILED_ERROR
        self.inner = FakeGemini(api_key=api_key)
        self.hold = False
        self.wrong_keys = False  # inlined responses come back under keys nobody sent
        self.create_reply: dict[str, Any] | None = None  # replaces the create's Operation
        self.create_errors: deque[str] = deque()
        self.poll_errors: deque[str] = deque()
        self.batches: dict[str, Batch] = {}
        self.order: list[str] = []  # batch names, oldest first
        self.seen: list[Seen] = []
        self.creates = 0
        self._ids = itertools.count(1)

    def fail_create(self, *scenarios: str) -> FakeGeminiBatch:
        assert all(s in CREATE_ERRORS for s in scenarios), scenarios
        self.create_errors.extend(scenarios)
        return self

    def fail_polls(self, *scenarios: str) -> FakeGeminiBatch:
        assert all(s in POLL_ERRORS for s in scenarios), scenarios
        self.poll_errors.extend(scenarios)
        return self

    def add(self, display_name: str, *states: str, requests: list[dict[str, Any]] | None = None,
            model: str = "gemini-3.1-flash-image") -> Batch:
        """A batch that exists before the test's flow runs (another job's, or an earlier try)."""
        batch = Batch(f"batches/6czrv8tda2rbsvn7{next(self._ids):04d}", model, display_name,
                      requests or [], list(states or self.states))
        self.batches[batch.name] = batch
        self.order.append(batch.name)
        return batch

    @property
    def only(self) -> Batch:
        (batch,) = self.batches.values()
        return batch

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body: Any = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        path = request.url.path
        if request.url.host != GEMINI_HOST:
            return httpx.Response(404, text="<html>Error 404 (Not Found)</html>")
        if request.headers.get("x-goog-api-key") != self.api_key:
            return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API "
                         "key.", [error_info("API_KEY_INVALID", GEMINI_HOST)])
        create, one = _CREATE.match(path), _BATCH.match(path)
        if request.method == "POST" and create:
            return await self._create(create.group(1), body)
        if request.method == "GET" and path == "/v1beta/batches":
            return self._list(request.url.params)
        if one and one.group(1) in self.batches:
            batch = self.batches[one.group(1)]
            if request.method == "POST" and one.group(2):
                return self._cancel(batch)
            if request.method == "GET" and not one.group(2):
                return await self._get(batch)
        return error(404, "NOT_FOUND", "Requested entity was not found.")

    async def _create(self, model: str, body: Any) -> httpx.Response:
        self.creates += 1
        if self.create_errors:
            return CREATE_ERRORS[self.create_errors.popleft()]()
        if model not in MODELS:
            return error(404, "NOT_FOUND", f"models/{model} is not found for API version "
                         "v1beta, or is not supported for batchGenerateContent.")
        problem = _invalid(body)
        if problem:
            return error(400, "INVALID_ARGUMENT", problem)
        spec = body["batch"]
        batch = self.add(spec["displayName"], *self.states, model=model,
                         requests=spec["inputConfig"]["requests"]["requests"])
        await self._settle(batch)
        if self.create_reply is not None:
            return httpx.Response(200, json=self.create_reply)
        return httpx.Response(200, json=self.operation(batch))

    async def _get(self, batch: Batch) -> httpx.Response:
        if self.poll_errors:
            return POLL_ERRORS[self.poll_errors.popleft()]()
        if not self.hold and batch.state not in TERMINAL:
            batch.step = min(batch.step + 1, len(batch.states) - 1)
        batch.answered.append(batch.state)
        await self._settle(batch)
        return httpx.Response(200, json=self.operation(batch))

    async def _settle(self, batch: Batch) -> None:
        """A batch that has just succeeded gets its responses, once."""
        if batch.state == "SUCCEEDED" and batch.output is None:
            batch.output = [await self._answer(batch.model, item) for item in batch.requests]

    def _cancel(self, batch: Batch) -> httpx.Response:
        if batch.state not in TERMINAL:
            batch.states = [*batch.states[: batch.step], "CANCELLED"]
        return httpx.Response(200, json={})

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        newest = list(reversed(self.order))
        start = int(params.get("pageToken") or 0)
        size = min(int(params.get("pageSize") or 50), self.page_size)
        page = newest[start: start + size]
        reply: dict[str, Any] = {"operations": [
            self.operation(self.batches[name], inline=False) for name in page]}
        if start + size < len(newest):
            reply["nextPageToken"] = str(start + size)
        return httpx.Response(200, json=reply)

    async def _answer(self, model: str, item: dict[str, Any]) -> dict[str, Any]:
        """One inline request run through the fake generateContent: its response, or its error
        as a google.rpc.Status with the gRPC code."""
        key = item["metadata"]["key"] + ("-other" if self.wrong_keys else "")
        call = httpx.Request("POST", f"{GEMINI_BASE}/models/{model}:generateContent",
                             headers={"x-goog-api-key": self.api_key}, json=item["request"])
        reply = await self.inner.handle_async_request(call)
        answer = orjson.loads(await reply.aread())
        if reply.status_code == 200:
            return {"response": answer, "metadata": {"key": key}}
        rpc = answer["error"]
        status: dict[str, Any] = {"code": GRPC.get(rpc["status"], 2), "message": rpc["message"]}
        if rpc.get("details"):
            status["details"] = rpc["details"]
        return {"error": status, "metadata": {"key": key}}

    def operation(self, batch: Batch, inline: bool = True) -> dict[str, Any]:
        """The batch as Google returns it: a long-running Operation, the batch in metadata."""
        done = batch.state in TERMINAL
        meta: dict[str, Any] = {
            "@type": BATCH_TYPE, "name": batch.name, "model": f"models/{batch.model}",
            "displayName": batch.display_name, "createTime": "2026-11-20T10:00:00.000000Z",
            "updateTime": "2026-11-20T10:05:00.000000Z",
            "batchStats": {"requestCount": str(len(batch.requests)),
                           "pendingRequestCount": "0" if done else str(len(batch.requests))},
            "state": f"BATCH_STATE_{batch.state}"}
        operation: dict[str, Any] = {"name": batch.name, "metadata": meta}
        if not done:
            return operation
        meta["endTime"] = "2026-11-20T10:05:00.000000Z"
        operation["done"] = True
        if batch.state == "FAILED":
            operation["error"] = self.failed_error
        if batch.state == "SUCCEEDED" and inline:
            responses = {"inlinedResponses": {"inlinedResponses": batch.output or []}}
            meta["output"] = responses
            operation["response"] = {"@type": OUTPUT_TYPE, **responses}
        return operation


def _invalid(body: Any) -> str | None:
    """What Google would refuse in a create body: the shape of §2.7's inline mode."""
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict) or set(body) != {"batch"}:
        return "Invalid JSON payload received. Expected a 'batch' object."
    unknown = set(batch) - {"displayName", "inputConfig", "priority"}
    if unknown:
        return f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'batch'"
    if not isinstance(batch.get("displayName"), str):
        return "batch.display_name is required."
    config = batch.get("inputConfig")
    requests = ((config or {}).get("requests") or {}).get("requests") \
        if isinstance(config, dict) else None
    if not isinstance(requests, list) or not requests:
        return "batch.input_config.requests must hold at least one request."
    keys = []
    for item in requests:
        if not isinstance(item, dict) or set(item) - {"request", "metadata"} \
                or not isinstance(item.get("request"), dict):
            return "Each inlined request needs a 'request' (GenerateContentRequest)."
        keys.append((item.get("metadata") or {}).get("key"))
    if not all(isinstance(k, str) and k for k in keys) or len(set(keys)) != len(keys):
        return "Each inlined request needs a unique metadata.key."
    return None
