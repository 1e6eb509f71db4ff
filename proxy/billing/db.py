"""One small database interface over SQLite (the default) and PostgreSQL (at scale).

The billing tables are written once, in portable SQL with `?` placeholders; this module runs
them on either engine. Calls are synchronous and thread-safe: the server makes them through
asyncio.to_thread, the CLI directly. PostgreSQL needs the `postgres` extra (psycopg 3).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

Row = tuple[Any, ...]


class Cursor(Protocol):
    """What a transaction offers: run a statement, read rows."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...


class Database(Protocol):
    engine: str  # "sqlite" or "postgres"

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...
    def transaction(self) -> contextlib.AbstractContextManager[Cursor]: ...
    def close(self) -> None: ...


def connect(target: str | Path) -> Database:
    """PostgreSQL for a postgres:// or postgresql:// URL, else an SQLite file at that path."""
    text = str(target)
    if text.startswith(("postgres://", "postgresql://")):
        return PostgresDatabase(text)
    return SqliteDatabase(Path(text))


class _SqliteCursor:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(args)).rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return list(self._db.execute(sql, tuple(args)).fetchall())


class SqliteDatabase:
    """One connection behind a lock; WAL so the CLI can write while the server reads.

    synchronous=NORMAL in WAL mode survives a killed process (only an OS crash can lose the
    last commits), which is the durability the ledger promises.
    """

    engine = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._cursor = _SqliteCursor(self._db)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._cursor.execute(sql, args)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._cursor.query(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """BEGIN IMMEDIATE takes the write lock up front, across processes too."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._cursor
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _pg(sql: str) -> str:
    """Portable `?` placeholders to psycopg's `%s` (our SQL holds no literal percent)."""
    return sql.replace("?", "%s")


class _PostgresCursor:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._conn.cursor() as cur:
            cur.execute(_pg(sql), tuple(args))
            return int(cur.rowcount)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._conn.cursor() as cur:
            cur.execute(_pg(sql), tuple(args))
            return list(cur.fetchall())


class PostgresDatabase:
    """A small pool of psycopg connections; each statement outside a transaction commits."""

    engine = "postgres"

    def __init__(self, url: str, size: int = 8) -> None:
        try:
            import psycopg
        except ImportError:
            raise RuntimeError("a PostgreSQL database_url needs the postgres extra: "
                               "pip install 'switchyard[postgres]'") from None
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._all = [psycopg.connect(url, autocommit=True) for _ in range(size)]
        for conn in self._all:
            self._pool.put(conn)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        conn = self._pool.get()
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._connection() as conn:
            return _PostgresCursor(conn).execute(sql, args)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._connection() as conn:
            return _PostgresCursor(conn).query(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._connection() as conn, conn.transaction():
            yield _PostgresCursor(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
