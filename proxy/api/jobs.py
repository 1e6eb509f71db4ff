"""Asynchronous image requests: `Prefer: respond-async` (or a `callback_url` field) answers
202 with a job; GET /v1/images/jobs/{id} reports it, with the OpenAI images body when done.

The request is validated before it is queued (a bad one is a 400 now, never a failed job
later) and stored as JSON, so the worker parses it again exactly as the handler would. With
an Idempotency-Key a retry gets the job its first request queued (202 while it runs, 200 once
it has finished), never a second job.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy import tracing
from proxy.api import idempotent, inputs
from proxy.api.auth import authenticate
from proxy.api.errors import ApiError, bad_request
from proxy.billing.db import until_known
from proxy.billing.idempotency import Once
from proxy.billing.jobs import Job
from proxy.billing.keys import KeyRecord
from proxy.billing.queue_cap import QueueFull
from proxy.egress import Policy, Refused
from proxy.services import Services, services

PREFER = "respond-async"


def wants_async(request: Request, data: dict[str, Any] | None) -> bool:
    return PREFER in request.headers.get("prefer", "").lower() or \
        bool(data and data.get("callback_url"))


def callback_url(svc: Services, value: Any) -> str | None:
    """A client's webhook URL, if it passes proxy.egress's rules: https to a public address,
    or to a network the operator allows (plain http only there). A host name is checked
    again, against what it resolves to, each time its webhook connects."""
    if value is None:
        return None
    try:
        return Policy(svc.config.callback_allow_cidrs).check_url(value).url
    except Refused as exc:
        raise bad_request("callback_url", str(exc)) from None


async def accept(svc: Services, key: KeyRecord, endpoint: str, data: dict[str, Any],
                 hook: str | None, once: Once | None = None) -> Response:
    """Queue the job: 202. With an Idempotency-Key (`once`), the job this key queued before
    if it did: a retry gets the same job, whoever asked first (idempotent.create_once)."""
    table, body = svc.store.jobs, orjson.dumps(data)
    most, trace = svc.config.max_queued_per_key, tracing.traceparent()
    try:
        if once is None:
            job = await until_known(functools.partial(
                table.queue, table.new(key.id, endpoint, body, hook, trace), most))
            return _accepted(job, replayed=False)
        job_id, replayed = await idempotent.create_once(
            svc, once, lambda cur: table.enqueue(key.id, endpoint, body, hook, cur, most,
                                                 trace).id)
    except QueueFull as exc:
        raise queue_full(exc, None) from None
    return await replay(svc, key, job_id) if replayed else \
        _accepted(await _own(svc, key, job_id), replayed=False)


def queue_full(exc: QueueFull, param: str | None) -> ApiError:
    """429 for work the key's cap on queued work (max_queued_per_key) has no room for."""
    return ApiError(429, f"This key has {exc.queued:,} async jobs and batch items queued or "
                         f"running; {exc.adding:,} more would pass its limit of {exc.most:,} "
                         f"(max_queued_per_key). Nothing was queued or billed; retry once some "
                         f"have finished.", type="requests", param=param,
                    code="queue_limit_exceeded")


async def replay(svc: Services, key: KeyRecord, job_id: str) -> Response:
    """The job an Idempotency-Key queued before, as it is now."""
    return _accepted(await _own(svc, key, job_id), replayed=True)


def _accepted(job: Job, replayed: bool) -> Response:
    """202 with the job; a replay of a job that has finished is a 200 (its result is in)."""
    headers = {"location": f"/v1/images/jobs/{job.id}"}
    if replayed:
        headers[idempotent.REPLAYED] = "true"
    status = 200 if replayed and job.finished_at is not None else 202
    return Response(orjson.dumps(describe(job)), status, headers, "application/json")


async def _own(svc: Services, key: KeyRecord, job_id: str) -> Job:
    job = await asyncio.to_thread(svc.store.jobs.get, job_id, key.id)
    if job is None:
        raise ApiError(404, "no such image job for this key", code="not_found")
    return job


def describe(job: Job) -> dict[str, Any]:
    """The job as the client sees it: state, and the images body or the error when done."""
    body: dict[str, Any] = {"id": job.id, "object": "image.job",
                            "status": "processing" if job.state == "processing" else job.state,
                            "created_at": job.created_at, "completed_at": job.finished_at,
                            "result": None, "error": None}
    if job.response is not None:
        payload = orjson.loads(job.response)
        if job.state == "succeeded":
            body["result"] = payload
        else:
            body["error"] = {**payload.get("error", {}), "status": job.status}
    return body


async def get_job(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    job = await _own(svc, key, inputs.path_param(request, "job_id"))
    return Response(orjson.dumps(describe(job)), media_type="application/json")
