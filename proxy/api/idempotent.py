"""The Idempotency-Key header: a retried request gets the first response again, billed once.

Concurrent duplicates wait for the first one (polling its claim) instead of generating twice.
A key reused for a different request is refused. Only a success is kept; after a failure the
same key may try again. Keys are per tenant key: one tenant never sees another's responses.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from proxy.api.errors import ApiError
from proxy.billing.idempotency import Claimed, Stored
from proxy.billing.keys import KeyRecord
from proxy.services import Services

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
POLL_S = 0.1
# Response headers that describe this delivery, not the stored one.
_NOT_REPLAYED = frozenset({"x-request-id", "content-length", "date", "server"})


async def once(request: Request, svc: Services, key: KeyRecord, idem_key: str,
               produce: Callable[[], Awaitable[Response]]) -> Response:
    """`produce()` at most once per (tenant key, idempotency key) within 24 hours."""
    if not idem_key or len(idem_key) > MAX_KEY_LENGTH:
        raise ApiError(400, f"the Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} "
                            f"characters", param=HEADER, code="invalid_idempotency_key")
    fingerprint = hashlib.sha256(request.url.path.encode() + b"\n" + await request.body()
                                 ).hexdigest()
    table = svc.store.idempotency
    deadline = time.monotonic() + svc.config.request_timeout_s
    while True:
        claimed, stored = await asyncio.to_thread(table.claim, key.id, idem_key, fingerprint)
        if claimed is Claimed.DONE and stored is not None:
            return _replay(stored)
        if claimed is Claimed.MISMATCH:
            raise ApiError(400, "this Idempotency-Key was already used for a different "
                                "request; use a new key", param=HEADER,
                           code="idempotency_key_reused")
        if claimed is Claimed.NEW:
            return await _first(svc, key, idem_key, produce)
        if time.monotonic() > deadline:
            raise ApiError(409, "a request with this Idempotency-Key is still in progress",
                           param=HEADER, code="idempotency_key_in_progress",
                           headers={"retry-after": "5"})
        await asyncio.sleep(POLL_S)


async def _first(svc: Services, key: KeyRecord, idem_key: str,
                 produce: Callable[[], Awaitable[Response]]) -> Response:
    table = svc.store.idempotency
    try:
        response = await produce()
    except BaseException:
        await asyncio.shield(asyncio.to_thread(table.abandon, key.id, idem_key))
        raise
    headers = {k: v for k, v in response.headers.items() if k not in _NOT_REPLAYED}
    await asyncio.to_thread(table.complete, key.id, idem_key,
                            Stored(response.status_code, headers, bytes(response.body)))
    return response


def _replay(stored: Stored) -> Response:
    headers = {**stored.headers, "idempotent-replayed": "true"}
    headers.pop("content-type", None)
    return Response(stored.body, stored.status, headers, "application/json")
