"""One small database interface over SQLite (the default) and PostgreSQL (at scale).

The billing tables are written once, in portable SQL with `?` placeholders; this module runs
them on either engine. Calls are synchronous and thread-safe: the server makes them through
asyncio.to_thread, the CLI directly. PostgreSQL (postgres.py) needs the `postgres` extra.

A database that cannot answer now (its server down or restarting, a connection that broke,
SQLite locked past its busy timeout) raises DatabaseUnavailable on either engine: the API
answers 503 and background loops try again, so an outage lasts as long as the database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

Row = tuple[Any, ...]
T = TypeVar("T")
BUSY_TIMEOUT_S = 10.0  # how long an SQLite call waits for another process's write lock
LOCK_POLL_S = 0.0005  # ... trying it again this often
NOW_CHECKPOINT_PAGES = 10_000  # transaction_now's autocheckpoint (40 MB of log; default 1000)


class DatabaseUnavailable(Exception):
    """The database cannot answer now: its server is down, restarting or unreachable, the
    connection broke, or SQLite stayed locked. The failed call committed nothing (but see
    ConnectionLost). The message names the engine and the error's kind, never the URL."""


class ConnectionLost(DatabaseUnavailable):
    """The connection broke while the call was under way: a write may have been committed
    just before its answer was lost, so only an idempotent call may simply be tried again."""


class Busy(Exception):
    """The database is taken this instant (transaction_now): nothing was written, and the
    same write goes through the usual way, which waits its turn."""


class Conflict(DatabaseUnavailable):
    """The database rolled the transaction back for a conflict with another one (a deadlock,
    a serialization failure): nothing of it was written, and tried again it goes through."""


LOST_TRIES = 3  # tries of an idempotent call whose connection broke under it
LOST_PAUSE_S = 0.05  # between them: a server ends all its connections within a moment
# How long a write whose commit's answer was lost goes on asking whether it was made, through
# a restart or failover that follows (until_known).
KNOWN_WITHIN_S = 10.0


def retry_lost(call: Callable[[], T]) -> T:
    """`call()`, tried again (up to LOST_TRIES in all) while its connection breaks under it:
    only for a call that is idempotent, a read or a write that changes nothing the second
    time. After a restart or pg_terminate_backend the next try gets a new connection."""
    for tries_left in range(LOST_TRIES - 1, -1, -1):
        try:
            return call()
        except ConnectionLost:
            if not tries_left:
                raise
            time.sleep(LOST_PAUSE_S)
    raise AssertionError("unreachable")


async def until_known(call: Callable[[], T], within_s: float = KNOWN_WITHIN_S) -> T:
    """`call()` on a thread, for a call that first looks for what it makes (a queued job):
    once a connection broke under it, the answer may have been lost after the commit, and a
    503 then would have the client make it again; so it is tried again through
    DatabaseUnavailable too (the server restarting, or failing over) for up to `within_s`,
    until it is known. The waits are the event loop's: a thread is held only by a try."""
    lost_at = None
    while True:
        try:
            return await asyncio.to_thread(call)
        except ConnectionLost:
            lost_at = lost_at or time.monotonic()
        except DatabaseUnavailable:
            if lost_at is None:
                raise  # nothing was sent: a plain 503 is right
        if time.monotonic() - lost_at > within_s:
            raise DatabaseUnavailable("PostgreSQL is unavailable (a write's answer was lost)")
        await asyncio.sleep(LOST_PAUSE_S * 4)


class Cursor(Protocol):
    """What a transaction offers: run a statement, read rows."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...


class Database(Protocol):
    engine: str  # "sqlite" or "postgres"

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read (retried while its connection breaks under it)."""
    def transaction(self) -> contextlib.AbstractContextManager[Cursor]: ...
    def transaction_now(self) -> contextlib.AbstractContextManager[Cursor]:
        """A transaction that never waits: Busy at once if the database is taken."""
    def ping(self, timeout_s: float) -> None:
        """Return if the database takes a write now, within about `timeout_s`; else raise
        DatabaseUnavailable (readiness probes)."""
    def clock(self) -> float:
        """Now (epoch seconds) on the one clock every process of this database reads: a
        lease one process writes, another compares with its own now."""
    def close(self) -> None: ...


def connect(target: str | Path) -> Database:
    """PostgreSQL for a postgres:// or postgresql:// URL, else an SQLite file at that path."""
    text = str(target)
    if text.startswith(("postgres://", "postgresql://")):
        from proxy.billing.postgres import PostgresDatabase
        return PostgresDatabase(text)
    return SqliteDatabase(Path(text))


class _SqliteCursor:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(args)).rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return list(self._db.execute(sql, tuple(args)).fetchall())


# Primary result codes that mean "not now", not "wrong SQL": locked by another connection
# past the busy timeout, or the file cannot be opened, read or written at the moment.
_SQLITE_UNAVAILABLE = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
                                 sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR})


class SqliteDatabase:
    """One connection behind a lock, shared by most calls; WAL so the CLI can write while the
    server reads. An aside connection of its own copies the log back (checkpoint) and takes
    big reads (query_aside), and a third, for the event loop's own thread, never waits for a
    lock (transaction_now).

    synchronous=NORMAL in WAL mode survives a killed process (only an OS crash can lose the
    last commits), which is the durability the ledger promises. A call waits at most the
    busy timeout for the lock of this process, and as long again for another process's.

    Another process's write lock is waited for here, trying again every LOCK_POLL_S (the
    shared connection's own busy timeout is 0): SQLite's busy handler sleeps 1, 2, 5, 10,
    15, 20, 25, 25, 25, 50, 50 and then 100 ms between its tries, so under `serve --workers 2`
    one worker's writer waited while the other took the lock again and again (at 2 KB x 64,
    p99 0.1 to 0.67 s and single requests over 0.9 s, where one worker's p99 was 0.08 s).
    """

    engine = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made readable by its owner only (SQLite gives its log files the same mode): it
        # holds each key's webhook signing secret and the responses kept for replays.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=0")  # waited for here: _waited
        self._cursor = _SqliteCursor(self._db)
        self._path = path
        self._side_lock = threading.Lock()
        self._side: sqlite3.Connection | None = None  # the aside one, opened at its first use
        self._now_lock = threading.Lock()
        self._now: sqlite3.Connection | None = None  # transaction_now's, opened at first use

    # Locking and error mapping are written out in each call (not a context manager): this
    # is every ledger write's path, and a generator-based one cost it a microsecond a call.
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        self._acquire(BUSY_TIMEOUT_S)
        try:
            try:
                return self._cursor.execute(sql, args)
            except sqlite3.OperationalError as exc:
                return _waited(exc, BUSY_TIMEOUT_S, self._cursor.execute, sql, args)
        except sqlite3.OperationalError as exc:
            _unavailable(exc)
            raise
        finally:
            self._lock.release()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        self._acquire(BUSY_TIMEOUT_S)
        try:
            try:
                return self._cursor.query(sql, args)
            except sqlite3.OperationalError as exc:
                return _waited(exc, BUSY_TIMEOUT_S, self._cursor.query, sql, args)
        except sqlite3.OperationalError as exc:
            _unavailable(exc)
            raise
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """BEGIN IMMEDIATE takes the write lock up front, across processes too."""
        self._acquire(BUSY_TIMEOUT_S)
        try:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                _waited(exc, BUSY_TIMEOUT_S, self._db.execute, "BEGIN IMMEDIATE")
            try:
                yield self._cursor
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a COMMIT refused (busy) leaves it open
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            _unavailable(exc)
            raise
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def transaction_now(self) -> Iterator[Cursor]:
        """BEGIN IMMEDIATE on a connection of its own whose busy timeout is 0: Busy at once
        if any connection, of this process or another, holds the write lock (the shared one
        on a thread, say), where `transaction` would wait up to BUSY_TIMEOUT_S. For the
        event loop's thread, which must never wait on a lock."""
        if not self._now_lock.acquire(blocking=False):
            raise Busy("the SQLite database is in use on another thread")
        try:
            if self._now is None:
                # Its commits seldom copy the log back themselves (a checkpoint fsyncs): the
                # server's CHECKPOINT_S loop does (checkpoint, off the loop). Without that
                # loop the log still stops growing, at NOW_CHECKPOINT_PAGES (a write that
                # slow sends the next ones to the writer thread a while: billing/writer.py).
                self._now = _connection(self._path, 0.0, NOW_CHECKPOINT_PAGES)
            try:
                self._now.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise Busy("the SQLite database is being written") from None
                raise
            try:
                yield _SqliteCursor(self._now)
                self._now.execute("COMMIT")
            except BaseException:
                if self._now.in_transaction:
                    self._now.execute("ROLLBACK")
                raise
        finally:
            self._now_lock.release()

    def ping(self, timeout_s: float) -> None:
        """Take the write lock for a moment (readers are never blocked in WAL mode: a lock
        held elsewhere shows only to a writer)."""
        self._acquire(timeout_s)
        try:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                _waited(exc, timeout_s, self._db.execute, "BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            _unavailable(exc)
            raise
        finally:
            self._lock.release()

    def checkpoint(self) -> None:
        """Copy the write-ahead log's pages into the database file now, through the aside
        connection, so that no commit on the shared one meets the log past
        wal_autocheckpoint (1000 pages) and copies them itself, holding every other call
        behind the lock for tens of milliseconds meanwhile. PASSIVE: no write and no read
        waits for it (what a reader still needs stays in the log, for a later checkpoint).
        For a bulk writer between its steps, and the app twice a second (app.py: CHECKPOINT_S);
        skipped while another thread uses the aside connection."""
        if self._side_lock.acquire(blocking=False):
            self._aside("PRAGMA wal_checkpoint(PASSIVE)", ())

    def query_aside(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read through the aside connection, not the shared one: for a big one (a
        50,000-line batch input file took 20-40 ms) that would keep every other call
        waiting. WAL lets it run beside the shared connection's writes."""
        self._acquire_side(BUSY_TIMEOUT_S)
        return self._aside(sql, args)

    def _acquire_side(self, timeout_s: float) -> None:
        if not self._side_lock.acquire(timeout=timeout_s):
            raise DatabaseUnavailable(f"the SQLite database stayed busy for {timeout_s:g} s")

    def _aside(self, sql: str, args: Sequence[Any]) -> list[Row]:
        """`sql` on the aside connection (opened at its first use); the caller holds its
        lock, released here."""
        try:
            if self._side is None:
                self._side = _connection(self._path, BUSY_TIMEOUT_S)
            return list(self._side.execute(sql, tuple(args)).fetchall())
        except sqlite3.OperationalError as exc:
            _unavailable(exc)
            raise
        finally:
            self._side_lock.release()

    def clock(self) -> float:
        """This machine's clock: every process of an SQLite database runs on it."""
        return time.time()

    def close(self) -> None:
        with self._side_lock:
            if self._side is not None:
                self._side.close()
        with self._now_lock:
            if self._now is not None:
                self._now.close()
                self._now = None
        with self._lock:
            self._db.close()

    def _acquire(self, timeout_s: float) -> None:
        """This process's lock on the connection, or DatabaseUnavailable after `timeout_s`."""
        if not self._lock.acquire(timeout=timeout_s):
            raise DatabaseUnavailable(f"the SQLite database stayed busy for {timeout_s:g} s")


def _waited(busy: sqlite3.OperationalError, timeout_s: float, call: Callable[..., T],
            *args: Any) -> T:
    """`call(*args)` once more every LOCK_POLL_S while SQLite is busy (`busy` is what the
    first try raised; anything but SQLITE_BUSY is raised again), for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while busy.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY and time.monotonic() < deadline:
        time.sleep(LOCK_POLL_S)
        try:
            return call(*args)
        except sqlite3.OperationalError as exc:
            busy = exc
    raise busy


def _connection(path: Path, busy_s: float, checkpoint_pages: int | None = None
                ) -> sqlite3.Connection:
    """A further connection to the file (aside, or transaction_now's), returned only once
    set up whole: one that kept SQLite's defaults would fsync every commit."""
    conn = sqlite3.connect(path, timeout=busy_s, check_same_thread=False,
                           isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={round(busy_s * 1000)}")
        if checkpoint_pages is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
    except BaseException:
        conn.close()
        raise
    return conn


def _unavailable(exc: sqlite3.OperationalError) -> None:
    """Raise DatabaseUnavailable for "locked" and "cannot open" (not for wrong SQL)."""
    if exc.sqlite_errorcode & 0xFF in _SQLITE_UNAVAILABLE:
        raise DatabaseUnavailable(
            f"the SQLite database is unavailable ({exc.sqlite_errorname})") from None
