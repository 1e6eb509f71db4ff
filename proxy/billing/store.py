"""The billing store: tenant keys here; budgets and the ledger in money.py, idempotent
responses in idempotency.py, usage reports in usage.py, all on one database (db.py).

SQLite in the data directory by default; PostgreSQL when `database_url` says so, which is how
several replicas share one truth. Synchronous and thread-safe: the server calls it through
asyncio.to_thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxy.billing import db as db_module
from proxy.billing.amounts import micros, usd
from proxy.billing.batches import Batches
from proxy.billing.cache_store import CacheStore
from proxy.billing.deferred import Deferred
from proxy.billing.idempotency import Idempotency
from proxy.billing.jobs import Jobs
from proxy.billing.journal import Journal
from proxy.billing.keys import KeyLimits, KeyRecord, digest, hint, new_key, new_key_id
from proxy.billing.money import Money
from proxy.billing.schema import migrate
from proxy.billing.usage import Usage
from proxy.billing.webhook_secrets import WebhookSecrets, new_secret

_COLUMNS = ("id, name, tenant, hint, created_at, revoked_at, allowed_models, strategy, plan, "
            "budget_micros, budget_period, rpm, ipm, concurrency, cache_ttl_s, lane")


class Store:
    """Opens (and migrates) the database; `money`, `idempotency`, `usage`, `jobs`, `batches`,
    `journal` and `webhook_secrets` share it, and `deferred` keeps their writes that must
    wait for it (the server retries them)."""

    def __init__(self, target: str | Path) -> None:
        self.db = db_module.connect(target)
        migrate(self.db)
        self.deferred = Deferred()
        self.money = Money(self.db, self.deferred)
        self.idempotency = Idempotency(self.db, self.deferred)
        self.usage = Usage(self.db)
        self.jobs = Jobs(self.db)
        self.batches = Batches(self.db)
        self.journal = Journal(self.db)
        self.webhook_secrets = WebhookSecrets(self.db)
        self.cache = CacheStore(self.db)

    def close(self) -> None:
        self.db.close()

    def ping(self, timeout_s: float) -> None:
        """Return if the database takes a write now; DatabaseUnavailable if not within about
        `timeout_s`."""
        self.db.ping(timeout_s)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_key(self, name: str, tenant: str | None = None,
                   limits: KeyLimits | None = None) -> tuple[KeyRecord, str]:
        """A new key, with a webhook signing secret of its own (webhook_secrets.py); the plain
        key is returned once and never stored. Without a tenant it is a tenant of its own (its
        id): a name is a free label two customers' keys may share, and what a tenant's keys
        share (the response cache) must not reach another's."""
        key, key_id = new_key(), new_key_id()
        record = KeyRecord(key_id, name, tenant or key_id, hint(key), int(time.time()),
                           limits=limits or KeyLimits())
        self.db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}, key_hash, webhook_secret) "
            f"VALUES ({', '.join('?' * (_COLUMNS.count(',') + 3))})",
            (*_row(record), digest(key), new_secret()))
        return record, key

    def list_keys(self) -> list[KeyRecord]:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_record(row) for row in rows]

    def get_key(self, key_id: str) -> KeyRecord | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return _record(rows[0]) if rows else None

    def update_limits(self, key_id: str, limits: KeyLimits) -> KeyRecord | None:
        """Replace a key's limits; None if there is no such key."""
        record = self.get_key(key_id)
        if record is None:
            return None
        updated = replace(record, limits=limits)
        values = _row(updated)[6:]
        self.db.execute(
            "UPDATE api_keys SET allowed_models = ?, strategy = ?, plan = ?, budget_micros = ?, "
            "budget_period = ?, rpm = ?, ipm = ?, concurrency = ?, cache_ttl_s = ?, "
            "lane = ? WHERE id = ?",
            (*values, key_id))
        return updated

    def revoke_key(self, key_id: str) -> bool:
        """True if an active key with that id was revoked."""
        return self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (int(time.time()), key_id)) == 1

    def rotate_key(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """A new secret for an active key (same id, limits, usage); the old one stops working."""
        key = new_key()
        changed = self.db.execute(
            "UPDATE api_keys SET key_hash = ?, hint = ? WHERE id = ? AND revoked_at IS NULL",
            (digest(key), hint(key), key_id))
        record = self.get_key(key_id) if changed else None
        return (record, key) if record else None

    def find_key(self, key_hash: str) -> tuple[str, KeyRecord] | None:
        rows = self.db.query(f"SELECT key_hash, {_COLUMNS} FROM api_keys WHERE key_hash = ?",
                             (key_hash,))
        return (rows[0][0], _record(rows[0][1:])) if rows else None

    def count_keys(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM api_keys")[0][0])


def _row(record: KeyRecord) -> tuple[Any, ...]:
    limits = record.limits
    models = json.dumps(list(limits.allowed_models)) if limits.allowed_models is not None \
        else None
    budget = micros(limits.budget_usd) if limits.budget_usd is not None else None
    return (record.id, record.name, record.tenant, record.hint, record.created_at,
            record.revoked_at, models, limits.strategy, limits.plan, budget,
            limits.budget_period, limits.rpm, limits.ipm, limits.concurrency,
            limits.cache_ttl_s, limits.lane)


def _record(row: tuple[Any, ...]) -> KeyRecord:
    (key_id, name, tenant, key_hint, created, revoked, models, strategy, plan, budget, period,
     rpm, ipm, concurrency, cache_ttl_s, lane) = row
    limits = KeyLimits(
        allowed_models=tuple(json.loads(models)) if models is not None else None,
        strategy=strategy, plan=plan,
        budget_usd=usd(int(budget)) if budget is not None else None,
        budget_period=period or "total", rpm=rpm, ipm=ipm, concurrency=concurrency,
        cache_ttl_s=cache_ttl_s, lane=lane)
    return KeyRecord(key_id, name, tenant, key_hint, int(created),
                     int(revoked) if revoked is not None else None, limits)



