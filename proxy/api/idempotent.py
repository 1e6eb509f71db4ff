"""The Idempotency-Key header: a retried request gets the first response again, billed once.

Concurrent duplicates wait for the first one (polling its claim) instead of generating twice.
The first holds its claim as a lease renewed while it runs, so a holder killed mid-request
leaves the key to its retry within seconds (proxy/billing/idempotency.py). A key reused for a
different request is refused. Only a success is kept; after a failure the same key may try
again. Keys are per tenant key: one tenant never sees another's responses.

An asynchronous request or a batch creates something (a job, a batch) and a retry gets that
same thing back (`created_before`, `create_once`): nothing is held while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from proxy.api.errors import ApiError
from proxy.billing.db import Cursor, DatabaseUnavailable
from proxy.billing.idempotency import (
    RENEW_S,
    Claim,
    Claimed,
    Idempotency,
    KeyReused,
    Once,
    Stored,
)
from proxy.billing.keys import KeyRecord
from proxy.services import Services

log = logging.getLogger("switchyard.requests")

HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"
MAX_KEY_LENGTH = 255
POLL_S = 0.1
# Response headers that describe this delivery, not the stored one.
_NOT_REPLAYED = frozenset({"x-request-id", "content-length", "date", "server"})


async def once(request: Request, svc: Services, key: KeyRecord, idem_key: str,
               produce: Callable[[], Awaitable[Response]]) -> Response:
    """`produce()` at most once per (tenant key, idempotency key) within 24 hours."""
    _check(idem_key)
    fingerprint = _fingerprint(request.url.path, await request.body())
    claim = Claim(key.id, idem_key, secrets.token_hex(8))
    table = svc.store.idempotency
    deadline = time.monotonic() + svc.config.request_timeout_s
    while True:
        claimed, stored = await asyncio.to_thread(table.claim, claim, fingerprint)
        if claimed is Claimed.DONE and stored is not None:
            return _replay(stored)
        if claimed is Claimed.MISMATCH:
            raise _reused()
        if claimed is Claimed.NEW:
            return await _first(table, claim, produce)
        if time.monotonic() > deadline:
            raise ApiError(409, "a request with this Idempotency-Key is still in progress",
                           param=HEADER, code="idempotency_key_in_progress",
                           headers={"retry-after": "5"})
        await asyncio.sleep(POLL_S)


def creating(key: KeyRecord, idem_key: str, what: str, body: bytes) -> Once:
    """The Idempotency-Key of a request that creates `what` (its path and kind) from `body`."""
    _check(idem_key)
    return Once(key.id, idem_key, _fingerprint(what, body))


async def created_before(svc: Services, once: Once) -> str | None:
    """The id of the job or batch this key created before, if any (a cheap look first: a
    retried batch is not validated again)."""
    try:
        return await asyncio.to_thread(svc.store.idempotency.created, once)
    except KeyReused:
        raise _reused() from None


async def create_once(svc: Services, once: Once,
                      create: Callable[[Cursor], str]) -> tuple[str, bool]:
    """`create(cur)` unless the key created something before: (its id, replayed)."""
    try:
        return await asyncio.to_thread(svc.store.idempotency.create_once, once, create)
    except KeyReused:
        raise _reused() from None


async def _first(table: Idempotency, claim: Claim,
                 produce: Callable[[], Awaitable[Response]]) -> Response:
    renewing = asyncio.create_task(_renew(table, claim))
    try:
        response = await produce()
    except BaseException:
        renewing.cancel()
        await asyncio.shield(asyncio.to_thread(table.abandon, claim))
        raise
    renewing.cancel()
    headers = {k: v for k, v in response.headers.items() if k not in _NOT_REPLAYED}
    await asyncio.to_thread(table.complete, claim,
                            Stored(response.status_code, headers, bytes(response.body)))
    return response


async def _renew(table: Idempotency, claim: Claim) -> None:
    """Keep the claim's lease while this request lives. A renewal the database could not
    take is tried again at the next turn: the lease outlasts several."""
    while True:
        await asyncio.sleep(RENEW_S)
        with contextlib.suppress(DatabaseUnavailable):
            if not await asyncio.to_thread(table.renew, claim):
                log.warning("key %s: an Idempotency-Key's lease lapsed and a retry took it "
                            "over; this request's response will not be kept for retries",
                            claim.key_id)
                return


def _check(idem_key: str) -> None:
    if not idem_key or len(idem_key) > MAX_KEY_LENGTH:
        raise ApiError(400, f"the Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} "
                            f"characters", param=HEADER, code="invalid_idempotency_key")


def _fingerprint(what: str, body: bytes) -> str:
    return hashlib.sha256(what.encode() + b"\n" + body).hexdigest()


def _reused() -> ApiError:
    return ApiError(400, "this Idempotency-Key was already used for a different request; "
                         "use a new key", param=HEADER, code="idempotency_key_reused")


def _replay(stored: Stored) -> Response:
    headers = {**stored.headers, REPLAYED: "true"}
    headers.pop("content-type", None)
    return Response(stored.body, stored.status, headers, "application/json")
