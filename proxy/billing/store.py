"""The embedded SQLite store: tenant keys now; budgets, limits and the ledger slot in later.

Schema changes are numbered migrations applied at open, so a data directory from an older
version upgrades in place. WAL mode lets the CLI write while the server reads.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from proxy.billing.keys import KeyRecord, digest, hint, new_key, new_key_id

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    """,
)

_COLUMNS = "id, name, tenant, hint, created_at, revoked_at"


class Store:
    """Synchronous and thread-safe; the server calls it through asyncio.to_thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.executescript(f"BEGIN; {script} PRAGMA user_version={number}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_key(self, name: str, tenant: str | None = None) -> tuple[KeyRecord, str]:
        """A new key; the plain key is returned once and never stored."""
        key = new_key()
        record = KeyRecord(new_key_id(), name, tenant or name, hint(key), int(time.time()))
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (id, name, tenant, key_hash, hint, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.name, record.tenant, digest(key), record.hint,
                 record.created_at),
            )
        return record, key

    def list_keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM api_keys ORDER BY rowid").fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        """True if an active key with that id was revoked."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id))
        return cursor.rowcount == 1

    def find_key(self, key_hash: str) -> tuple[str, KeyRecord] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT key_hash, {_COLUMNS} FROM api_keys WHERE key_hash = ?",
                (key_hash,)).fetchone()
        return None if row is None else (row[0], KeyRecord(*row[1:]))

    def count_keys(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])
