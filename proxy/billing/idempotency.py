"""Idempotency-Key: the first response to a key's request is kept 24 hours and sent again.

A claim is taken in the database before generating, so concurrent duplicates (in any process)
see "busy" and wait for the first instead of generating twice. The claim is a lease of
LEASE_S that its holder renews while it lives: a holder killed mid-request (kill -9, a lost
replica) stops renewing, and a retry takes the key over within seconds. Each claim carries
its holder's token, so a holder whose lease was taken over can neither keep nor give up the
new holder's claim. Leases are written and compared on the database's clock (Database.clock:
on PostgreSQL, the server's), as job leases are: replicas whose own clocks disagree by
seconds still agree on whose claim is live.

Only successes are kept: a failed first attempt gives the key up, and a retry may try again.
The same key with a different request body is refused rather than answered with the wrong
images. An asynchronous request or a batch does not hold a claim while it runs: the key is
recorded with the job or batch it created, in the transaction that creates it (`created`),
so a retry is answered with that job or batch and a crash cannot leave the key locked.

Keeping a response and giving a key up never fail for want of the database: the response was
billed, so it goes to its client all the same, and both writes are kept (deferred.py) until
the database is back, so a retry is answered from the kept response, or may try again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from proxy.billing.db import Cursor, Database, DatabaseUnavailable
from proxy.billing.deferred import Deferred

TTL_S = 24 * 3600
LEASE_S = 5  # a claim whose holder stopped renewing is taken over after this
RENEW_S = 1.0  # how often a live holder renews: four renewals may fail before it lapses
# A claim from before leases (no lease_until): stale after this, as it always was.
UNLEASED_STALE_S = 900


class Claimed(StrEnum):
    NEW = "new"  # ours: generate, then complete() or abandon()
    DONE = "done"  # answered before: replay the stored response
    BUSY = "busy"  # another request with this key is generating now
    MISMATCH = "mismatch"  # the key was used for a different request


@dataclass(frozen=True, slots=True)
class Claim:
    """One request's hold on a tenant key's Idempotency-Key; `holder` is its own token."""

    key_id: str
    idem_key: str
    holder: str


@dataclass(frozen=True, slots=True)
class Once:
    """A request that creates something (a job, a batch) under an Idempotency-Key."""

    key_id: str
    idem_key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    headers: dict[str, str]
    body: bytes


class KeyReused(Exception):
    """The Idempotency-Key was used before for a different request."""


# Expired responses, and claims whose holder stopped renewing, make room for a new claim.
_STALE = ("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? AND (created_at < ? OR "
          "(state = 'pending' AND COALESCE(lease_until, created_at + ?) < ?))")


def _clear_stale(cur: Cursor, key_id: str, idem_key: str, now: float) -> None:
    cur.execute(_STALE, (key_id, idem_key, int(now - TTL_S), UNLEASED_STALE_S, int(now)))


class Idempotency:
    def __init__(self, db: Database, deferred: Deferred | None = None) -> None:
        self._db = db
        self._deferred = deferred if deferred is not None else Deferred()

    def claim(self, claim: Claim, fingerprint: str,
              now: float | None = None) -> tuple[Claimed, Stored | None]:
        now = self._db.clock() if now is None else now
        with self._db.transaction() as cur:
            _clear_stale(cur, claim.key_id, claim.idem_key, now)
            # ON CONFLICT: a concurrent claim (another process) wins without an error here.
            if cur.execute("INSERT INTO idempotency (key_id, idem_key, fingerprint, state, "
                           "created_at, lease_until, holder) VALUES (?, ?, ?, 'pending', ?, ?, "
                           "?) ON CONFLICT (key_id, idem_key) DO NOTHING",
                           (claim.key_id, claim.idem_key, fingerprint, int(now),
                            int(now + LEASE_S), claim.holder)) == 1:
                return Claimed.NEW, None
            rows = cur.query("SELECT fingerprint, state, status, headers, body "
                             "FROM idempotency WHERE key_id = ? AND idem_key = ?",
                             (claim.key_id, claim.idem_key))
        stored_fingerprint, state, status, headers, body = rows[0]
        if stored_fingerprint != fingerprint:
            return Claimed.MISMATCH, None
        if state != "done":
            return Claimed.BUSY, None
        return Claimed.DONE, Stored(int(status), json.loads(headers), bytes(body))

    def renew(self, claim: Claim, now: float | None = None) -> bool:
        """Extend a live holder's lease; False if it is no longer this holder's (it lapsed
        and was taken over, or was completed)."""
        now = self._db.clock() if now is None else now
        return self._db.execute(
            "UPDATE idempotency SET lease_until = ? WHERE key_id = ? AND idem_key = ? AND "
            "holder = ? AND state = 'pending'",
            (int(now + LEASE_S), claim.key_id, claim.idem_key, claim.holder)) == 1

    def complete(self, claim: Claim, response: Stored) -> None:
        """Keep the first response for the key's retries (later, if the database is away)."""
        self._keep(self._complete, claim, response)

    def abandon(self, claim: Claim) -> None:
        """Give the key up after a failure (later, if the database is away)."""
        self._keep(self._abandon, claim)

    def created(self, once: Once, now: float | None = None) -> str | None:
        """The id of what this key created before (a job, a batch), if it did; KeyReused if
        it was used for a different request."""
        now = self._db.clock() if now is None else now
        rows = self._db.query("SELECT fingerprint, ref FROM idempotency WHERE key_id = ? AND "
                              "idem_key = ? AND created_at >= ?",
                              (once.key_id, once.idem_key, int(now - TTL_S)))
        if not rows:
            return None
        if rows[0][0] != once.fingerprint or not rows[0][1]:
            raise KeyReused(once.idem_key)
        return str(rows[0][1])

    def create_once(self, once: Once, create: Callable[[Cursor], str]) -> tuple[str, bool]:
        """`create(cur)` (which returns the new thing's id) unless this key created something
        before: (its id, True) then. Both in one transaction, so concurrent duplicates in any
        process create one thing between them. KeyReused if the key was used for a
        different request."""
        now = self._db.clock()
        with self._db.transaction() as cur:
            _clear_stale(cur, once.key_id, once.idem_key, now)
            # The key's row first: a concurrent duplicate waits here for this transaction.
            if cur.execute("INSERT INTO idempotency (key_id, idem_key, fingerprint, state, "
                           "created_at) VALUES (?, ?, ?, 'created', ?) "
                           "ON CONFLICT (key_id, idem_key) DO NOTHING",
                           (once.key_id, once.idem_key, once.fingerprint, int(now))) == 1:
                ref = create(cur)
                cur.execute("UPDATE idempotency SET ref = ? WHERE key_id = ? AND idem_key = ?",
                            (ref, once.key_id, once.idem_key))
                return ref, False
            rows = cur.query("SELECT fingerprint, ref FROM idempotency WHERE key_id = ? AND "
                             "idem_key = ?", (once.key_id, once.idem_key))
        if rows[0][0] != once.fingerprint or not rows[0][1]:
            raise KeyReused(once.idem_key)
        return str(rows[0][1]), True

    def _keep(self, write: Callable[..., None], *args: object) -> None:
        try:
            write(*args)
        except DatabaseUnavailable:
            self._deferred.add(write, *args)

    def _complete(self, claim: Claim, response: Stored) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ?, "
            "lease_until = NULL WHERE key_id = ? AND idem_key = ? AND holder = ?",
            (response.status, json.dumps(response.headers), response.body, claim.key_id,
             claim.idem_key, claim.holder))

    def _abandon(self, claim: Claim) -> None:
        self._db.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? "
                         "AND state = 'pending' AND holder = ?",
                         (claim.key_id, claim.idem_key, claim.holder))
