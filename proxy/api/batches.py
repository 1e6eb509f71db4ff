"""The OpenAI Batch API for images: /v1/files and /v1/batches, as the official SDK calls them.

An input file is JSONL, one `{"custom_id", "method": "POST", "url", "body"}` per line, `url`
being the batch's endpoint (/v1/images/generations or /v1/images/edits, JSON bodies). Each
line is validated like a request; a bad line goes to the error file and the rest still run.
Items are queued jobs (job_worker.py runs them); request_counts are read live from them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy import tracing
from proxy.api import batch_inputs, batch_lines, idempotent, inputs
from proxy.api.auth import authenticate
from proxy.api.errors import ApiError, bad_request
from proxy.api.jobs import queue_full
from proxy.billing.batches import CANCEL_CUT_S, Batch, StoredFile
from proxy.billing.db import until_known
from proxy.billing.idempotency import Once
from proxy.billing.keys import KeyRecord
from proxy.billing.queue_cap import QueueFull
from proxy.services import Services, services


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def file_object(stored: StoredFile) -> dict[str, Any]:
    # A batch's output and error files are both 'batch_output' to OpenAI (its purposes
    # enum has no other); the store tells them apart by its own purpose.
    return {"id": stored.id, "object": "file", "bytes": stored.size,
            "created_at": stored.created_at, "filename": stored.filename,
            "purpose": "batch_output" if stored.batch_id else stored.purpose,
            "status": "processed"}


async def upload_file(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    upload = await batch_inputs.upload(request)
    stored = await asyncio.to_thread(svc.store.batches.add_file, key.id, "batch",
                                     upload.filename, upload.content)
    return _json(file_object(stored))


async def _own_file(request: Request) -> tuple[Services, KeyRecord, StoredFile]:
    svc = services(request)
    key = await authenticate(request, svc)
    stored = await asyncio.to_thread(svc.store.batches.file,
                                     inputs.path_param(request, "file_id"), key.id)
    if stored is None:
        raise ApiError(404, "no such file for this key", code="not_found")
    return svc, key, stored


async def get_file(request: Request) -> Response:
    svc, _, stored = await _own_file(request)
    if stored.content is None and not stored.size:  # a batch's result file: sized once read
        size = len(await asyncio.to_thread(results_jsonl, svc, stored))
        await asyncio.to_thread(svc.store.batches.set_size, stored.id, size)
        stored = replace(stored, size=size)
    return _json(file_object(stored))


async def file_content(request: Request) -> Response:
    svc, _, stored = await _own_file(request)
    if stored.content is not None:
        return Response(stored.content, media_type="application/jsonl")
    lines = await asyncio.to_thread(results_jsonl, svc, stored)
    return Response(lines, media_type="application/jsonl")


def results_jsonl(svc: Services, stored: StoredFile) -> bytes:
    """A batch's output (purpose batch_output) or error file, from its jobs."""
    assert stored.batch_id is not None
    table = svc.store.batches
    ok = stored.purpose == "batch_output"
    lines = [orjson.dumps({"id": f"batch_req_{job_id}", "custom_id": custom_id,
                           "response": {"status_code": status or 499, "request_id": job_id,
                                        "body": orjson.loads(body) if body else None},
                           "error": None if body else {"code": "cancelled",
                                                       "message": "the batch was cancelled"}})
             for job_id, custom_id, status, body in table.items(stored.batch_id, ok)]
    batch = table.get(stored.batch_id)
    if not ok and batch is not None and batch.errors:
        lines.append(batch.errors.rstrip(b"\n"))
    return b"\n".join(lines) + (b"\n" if lines else b"")


async def create_batch(request: Request) -> Response:
    """A new batch; with an Idempotency-Key, a retry gets the batch its first request made."""
    svc = services(request)
    key = await authenticate(request, svc)
    once = await _once(request, key)
    if once is not None and (earlier := await idempotent.created_before(svc, once)):
        return await _replayed(svc, earlier)
    data = await inputs.json_object(request)
    ask = batch_inputs.batch_ask(data)  # so data["metadata"] is OpenAI's Metadata too
    endpoint, window = ask.endpoint, ask.completion_window
    stored = await asyncio.to_thread(svc.store.batches.file, ask.input_file_id, key.id)
    if stored is None or stored.content is None:
        raise bad_request("input_file_id", "no such input file for this key")
    # 50,000 lines take seconds of pure Python to check: in the worker process, whose GIL
    # is not the event loop's (batch_lines.py); the writing is mostly I/O, on a thread.
    checked = await svc.offload.run(batch_lines.check, stored.content, endpoint, svc.catalog,
                                    key)
    checked.raise_if_refused()
    items, errors = await asyncio.to_thread(checked.items), checked.errors
    table = svc.store.batches
    try:
        staged = await asyncio.to_thread(table.stage, key.id, endpoint, stored.id, window,
                                         data.get("metadata"), items, errors,
                                         svc.config.max_queued_per_key, tracing.traceparent())
    except QueueFull as exc:
        raise queue_full(exc, "input_file_id") from None
    if once is None:
        batch = await until_known(functools.partial(table.open, staged))
    else:
        batch_id, replayed = await idempotent.create_once(
            svc, once, lambda cur: table.open(staged, cur).id)
        if replayed:  # another request with the key made it first
            await asyncio.to_thread(table.discard, staged.id)
            return await _replayed(svc, batch_id)
        batch = await _found(svc, batch_id)
    if batch.status != "cancelling":  # nothing run yet: no counting 50,000 items
        return _json(await _batch_object(svc, batch, {}))
    await asyncio.to_thread(table.cancel_queued, batch.id)  # cancelled while validating
    return _json(await _batch_object(svc, batch))


async def _once(request: Request, key: KeyRecord) -> Once | None:
    idem_key = request.headers.get(idempotent.HEADER)
    return None if idem_key is None else \
        idempotent.creating(key, idem_key, request.url.path, await request.body())


async def _replayed(svc: Services, batch_id: str) -> Response:
    """The batch an Idempotency-Key created before, as it is now."""
    response = _json(await _batch_object(svc, await _found(svc, batch_id)))
    response.headers[idempotent.REPLAYED] = "true"
    return response


async def _found(svc: Services, batch_id: str) -> Batch:
    batch = await asyncio.to_thread(svc.store.batches.get, batch_id)
    if batch is None:
        raise ApiError(404, "no such batch for this key", code="not_found")
    return batch


async def _batch_object(svc: Services, batch: Batch,
                        counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The Batch object; its items' `counts` by state are read unless given."""
    if counts is None:
        counts = await asyncio.to_thread(svc.store.batches.counts, batch.id)
    bad = batch.errors.count(b"\n")
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": None,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
        "status": batch.status, "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id, "created_at": batch.created_at,
        "expires_at": batch.expires_at, "failed_at": None, "expired_at": None,
        **batch.times,
        "request_counts": {"total": batch.total + bad,
                           "completed": counts.get("succeeded", 0),
                           "failed": counts.get("failed", 0) + counts.get("cancelled", 0) + bad},
        "metadata": batch.metadata,
    }


async def get_batch(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    batch = await asyncio.to_thread(svc.store.batches.get,
                                    inputs.path_param(request, "batch_id"), key.id)
    if batch is None:
        raise ApiError(404, "no such batch for this key", code="not_found")
    return _json(await _batch_object(svc, batch))


async def list_batches(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    limit = inputs.query_integer(request, "limit", 1, 100, 20)  # OpenAI's range
    found = await asyncio.to_thread(svc.store.batches.of_key, key.id, limit + 1,
                                    inputs.query(request, "after"))
    data = [await _batch_object(svc, b) for b in found[:limit]]
    # OpenAI's ListBatchesResponse types first_id and last_id as strings: absent when empty
    ends = {"first_id": data[0]["id"], "last_id": data[-1]["id"]} if data else {}
    return _json({"object": "list", "data": data, **ends, "has_more": len(found) > limit})


async def cancel_batch(request: Request) -> Response:
    svc = services(request)
    key = await authenticate(request, svc)
    batch_id = inputs.path_param(request, "batch_id")
    if await asyncio.to_thread(svc.store.batches.get, batch_id, key.id) is None:
        raise ApiError(404, "no such batch for this key", code="not_found")
    await asyncio.to_thread(svc.store.batches.cancel, batch_id)
    batch = await asyncio.to_thread(svc.store.batches.get, batch_id)
    assert batch is not None
    return _json(await _batch_object(svc, batch))


def finalize(svc: Services) -> None:
    """End every open batch whose items have all ended, with its output and error files:
    each once, whichever process of a fleet gets there first; and drop the batches a crash
    left half written. Called by the job worker between jobs (synchronous: run it off the
    event loop)."""
    table = svc.store.batches
    table.discard_stale()
    for batch in table.open_batches():
        counts = table.counts(batch.id)  # a read first: most rounds find items still to run
        if batch.status == "cancelling" and counts.get("queued") and \
                (batch.times.get("cancelling_at") or 0) < time.time() - CANCEL_CUT_S:
            table.cancel_queued(batch.id)  # a cancel that a crash cut short
        elif not (counts.get("queued") or counts.get("processing")):
            table.finalize(batch.id)
