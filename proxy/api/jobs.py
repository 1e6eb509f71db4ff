"""Asynchronous image requests: `Prefer: respond-async` (or a `callback_url` field) answers
202 with a job; GET /v1/images/jobs/{id} reports it, with the OpenAI images body when done.

The request is validated before it is queued (a bad one is a 400 now, never a failed job
later) and stored as JSON, so the worker parses it again exactly as the handler would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.api import inputs
from proxy.api.auth import authenticate
from proxy.api.errors import ApiError, bad_request
from proxy.billing.jobs import Job
from proxy.billing.keys import KeyRecord
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
                 hook: str | None) -> Response:
    job = await asyncio.to_thread(svc.store.jobs.enqueue, key.id, endpoint,
                                  orjson.dumps(data), hook)
    return Response(orjson.dumps(describe(job)), 202,
                    {"location": f"/v1/images/jobs/{job.id}"}, "application/json")


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
    job = await asyncio.to_thread(svc.store.jobs.get, inputs.path_param(request, "job_id"),
                                  key.id)
    if job is None:
        raise ApiError(404, "no such image job for this key", code="not_found")
    return Response(orjson.dumps(describe(job)), media_type="application/json")
