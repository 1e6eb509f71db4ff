"""Idempotency-Key: the first response to a key's request is kept 24 hours and sent again.

A claim is taken in the database before generating, so concurrent duplicates (in any process)
see "busy" and wait for the first instead of generating twice. Only successes are kept: a
failed first attempt gives the key up, and a retry may try again. The same key with a
different request body is refused rather than answered with the wrong images.

Keeping a response and giving a key up never fail for want of the database: the response was
billed, so it goes to its client all the same, and both writes are kept (deferred.py) until
the database is back, so a retry is answered from the kept response, or may try again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum

from proxy.billing.db import Database, DatabaseUnavailable
from proxy.billing.deferred import Deferred

TTL_S = 24 * 3600
# A claim this old without a response belongs to a process that died: it may be taken over.
STALE_CLAIM_S = 900


class Claimed(StrEnum):
    NEW = "new"  # ours: generate, then complete() or abandon()
    DONE = "done"  # answered before: replay the stored response
    BUSY = "busy"  # another request with this key is generating now
    MISMATCH = "mismatch"  # the key was used for a different request


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    headers: dict[str, str]
    body: bytes


class Idempotency:
    def __init__(self, db: Database, deferred: Deferred | None = None) -> None:
        self._db = db
        self._deferred = deferred if deferred is not None else Deferred()

    def claim(self, key_id: str, idem_key: str, fingerprint: str,
              now: float | None = None) -> tuple[Claimed, Stored | None]:
        now = time.time() if now is None else now
        with self._db.transaction() as cur:
            # Expired responses, and claims whose process died, make room for a new claim.
            cur.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? AND "
                        "(created_at < ? OR (state = 'pending' AND created_at < ?))",
                        (key_id, idem_key, int(now - TTL_S), int(now - STALE_CLAIM_S)))
            # ON CONFLICT: a concurrent claim (another process) wins without an error here.
            if cur.execute("INSERT INTO idempotency (key_id, idem_key, fingerprint, state, "
                           "created_at) VALUES (?, ?, ?, 'pending', ?) "
                           "ON CONFLICT (key_id, idem_key) DO NOTHING",
                           (key_id, idem_key, fingerprint, int(now))) == 1:
                return Claimed.NEW, None
            rows = cur.query("SELECT fingerprint, state, status, headers, body, created_at "
                             "FROM idempotency WHERE key_id = ? AND idem_key = ?",
                             (key_id, idem_key))
        stored_fingerprint, state, status, headers, body, _ = rows[0]
        if stored_fingerprint != fingerprint:
            return Claimed.MISMATCH, None
        if state != "done":
            return Claimed.BUSY, None
        return Claimed.DONE, Stored(int(status), json.loads(headers), bytes(body))

    def complete(self, key_id: str, idem_key: str, response: Stored) -> None:
        """Keep the first response for the key's retries (later, if the database is away)."""
        try:
            self._complete(key_id, idem_key, response)
        except DatabaseUnavailable:
            self._deferred.add(self._complete, key_id, idem_key, response)

    def abandon(self, key_id: str, idem_key: str) -> None:
        """Give the key up after a failure (later, if the database is away)."""
        try:
            self._abandon(key_id, idem_key)
        except DatabaseUnavailable:
            self._deferred.add(self._abandon, key_id, idem_key)

    def _complete(self, key_id: str, idem_key: str, response: Stored) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ? "
            "WHERE key_id = ? AND idem_key = ?",
            (response.status, json.dumps(response.headers), response.body, key_id, idem_key))

    def _abandon(self, key_id: str, idem_key: str) -> None:
        self._db.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? "
                         "AND state = 'pending'", (key_id, idem_key))
