"""The billing database on PostgreSQL: a psycopg_pool pool that outlives its server's outages.

A connection the server hung up on (a restart, pg_terminate_backend) is noticed before it is
used, without a round trip, and replaced; the pool reconnects with backoff while the server
is away. Any failure on the way is DatabaseUnavailable (ConnectionLost when a connection broke
under a call), and while the server is known to be away a call gives up within DOWN_WAIT_S
instead of queueing for a connection, so requests answer 503 at once and service resumes by
itself when the server is back. Needs the `postgres` extra (psycopg 3 and psycopg_pool).
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from proxy.billing.db import (
    Busy,
    Conflict,
    ConnectionLost,
    Cursor,
    DatabaseUnavailable,
    Row,
    retry_lost,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("switchyard.database")

POOL_SIZE = 8
CONNECT_TIMEOUT_S = 5  # a server that does not answer a connect in this long is away
WAIT_S = 5.0  # the longest wait for a free connection while the server answers
DOWN_WAIT_S = 0.5  # ... and while it does not: a call fails fast instead of queueing
SLICE_S = 0.1  # a waiting caller looks this often whether the server went away meanwhile
# psycopg_pool retries a lost connection with backoff (1 s, 2 s, … but never past this) and
# then gives its slot up; a caller waiting for a connection starts another attempt at once.
# So while the server is away it is tried about this often while anyone waits (one attempt
# at a time per process), and service resumes within about this long once it is back.
RECONNECT_S = 0.5
CLOCK_S = 60.0  # how often a process measures its clock against the server's


def _pg(sql: str) -> str:
    """Portable `?` placeholders to psycopg's `%s` (our SQL holds no literal percent)."""
    return sql.replace("?", "%s")


class _PostgresCursor:
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
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
    """A pool of POOL_SIZE psycopg connections; each statement outside a transaction commits."""

    engine = "postgres"

    def __init__(self, url: str, size: int = POOL_SIZE) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError:
            raise RuntimeError("a PostgreSQL database_url needs the postgres extra: "
                               "pip install 'switchyard[postgres]'") from None
        # A server that takes no writes (a standby a failover left behind, or one set
        # read-only) is unavailable as much as one that is down: InternalError, in psycopg.
        self._read_only = psycopg.errors.ReadOnlySqlTransaction
        self._errors = (psycopg.OperationalError, psycopg.InterfaceError, self._read_only)
        # A deadlock or a serialization failure: the transaction may be tried again. psycopg
        # makes their own classes subclasses of OperationalError only, not of
        # TransactionRollback, so each is named.
        self._conflicts = (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected,
                           psycopg.errors.SerializationFailure)
        self._timeout = psycopg_pool.PoolTimeout
        # psycopg.pool's own lines are quieted in proxy.logs; the transitions are logged here
        # instead, once each.
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = \
            psycopg_pool.ConnectionPool(
                url, kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                min_size=size, max_size=size, open=False, timeout=WAIT_S,
                configure=lambda conn: self._good.__setitem__(conn, time.monotonic()),
                reconnect_timeout=RECONNECT_S, name="switchyard")
        self._down_since: float | None = None
        self._last_down = 0.0  # when the last outage began (time.monotonic())
        # When each pooled connection was made or last served a call: one that has not since
        # the last outage began is a casualty of it.
        self._good: weakref.WeakKeyDictionary[psycopg.Connection[Row], float] = \
            weakref.WeakKeyDictionary()
        self._state = threading.Lock()
        # The server's clock less this process's monotonic one, measured (at the first call
        # and every CLOCK_S) ...
        self._base = time.time() - time.monotonic()
        self._clock_due = 0.0  # ... again from this monotonic time
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise DatabaseUnavailable(f"PostgreSQL did not accept {size} connections within "
                                      f"{CONNECT_TIMEOUT_S} s at startup"
                                      f"{_why_not(url, psycopg)}") from None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._connection() as conn:
            return _PostgresCursor(conn).execute(sql, args)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return retry_lost(lambda: self._query(sql, args))

    def _query(self, sql: str, args: Sequence[Any]) -> list[Row]:
        with self._connection() as conn:
            return _PostgresCursor(conn).query(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._connection() as conn, conn.transaction():
            yield _PostgresCursor(conn)

    def transaction_now(self) -> contextlib.AbstractContextManager[Cursor]:
        """Never: a transaction here is a network round trip, which no event loop waits on."""
        raise Busy("PostgreSQL is written from the ledger threads")

    def clock(self) -> float:
        """The server's clock, carried on this process's monotonic clock: their difference
        is measured at the first call and then every CLOCK_S on a call's own connection (no
        I/O here). Replicas' own clocks may disagree by seconds, and a lease one writes (an
        Idempotency-Key's lasts 5 s), another compares; and this machine's wall clock may
        step (NTP, a restored VM), which the monotonic one never does."""
        return time.monotonic() + self._base

    def _measure(self, conn: psycopg.Connection[Row]) -> None:
        before = time.monotonic()
        row = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()
        after = time.monotonic()
        if row is not None:
            self._base = float(row[0]) - (before + after) / 2
        self._clock_due = after + CLOCK_S

    def script(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Row]:
        """Statements that need no answer from one another, in one transaction and one round
        trip: bound here (psycopg's ClientCursor quotes each value) and sent as one query,
        which the server runs as one transaction. The last statement's rows, if it has any.
        Each statement of a round trip of its own cost about 0.1 ms of CPU in psycopg."""
        import psycopg

        sql = "; ".join(_pg(statement) for statement, _ in statements)
        args = tuple(arg for _, given in statements for arg in given)
        with self._connection() as conn, psycopg.ClientCursor(conn) as cur:
            cur.execute(sql, args)
            while cur.nextset():
                pass
            return list(cur.fetchall()) if cur.description is not None else []

    def ping(self, timeout_s: float) -> None:
        """A round trip on a pooled connection (one the server hung up on is replaced first)
        to a server that takes writes: not a standby, nor read-only."""
        with self._connection(timeout_s) as conn:
            row = conn.execute("SELECT pg_is_in_recovery() OR "
                               "current_setting('transaction_read_only') = 'on'").fetchone()
        if row is None or row[0]:
            raise DatabaseUnavailable("PostgreSQL takes no writes (a standby, or read-only)")

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _connection(self, wait_s: float | None = None) -> Iterator[psycopg.Connection[Row]]:
        """A live connection for one call; the driver's connection errors become
        DatabaseUnavailable (ConnectionLost if this connection broke under the call). A
        broken connection goes back to the pool, which replaces it."""
        conn = self._checkout(wait_s)
        try:
            if time.monotonic() >= self._clock_due:
                self._measure(conn)
            yield conn
            self._good[conn] = time.monotonic()  # it served this call
        except self._errors as exc:
            lost = conn.broken
            if lost:
                self._went_down(type(exc).__name__, conn)
            elif isinstance(exc, self._read_only):
                conn.close()  # the pool opens another: it may reach the new primary
            kind = ConnectionLost if lost else Conflict if isinstance(
                exc, self._conflicts) else DatabaseUnavailable
            raise kind(f"PostgreSQL is unavailable ({type(exc).__name__})") from None
        finally:
            self._pool.putconn(conn)
        self._came_back()

    def _checkout(self, wait_s: float | None) -> psycopg.Connection[Row]:
        """A pooled connection the server has not hung up on; DatabaseUnavailable if none
        comes within `wait_s` (WAIT_S, or DOWN_WAIT_S once the server is known to be away:
        asked again every SLICE_S, so a caller already waiting gives up soon too)."""
        started = time.monotonic()
        while True:
            limit = wait_s if wait_s is not None else \
                WAIT_S if self._down_since is None else DOWN_WAIT_S
            left = started + limit - time.monotonic()
            if left <= 0:
                self._went_down("no connection came")
                raise DatabaseUnavailable("PostgreSQL is unavailable (no connection came)")
            try:
                conn = self._pool.getconn(min(left, SLICE_S))
            except self._timeout:
                continue
            except self._errors as exc:  # the pool is closed
                raise DatabaseUnavailable(f"PostgreSQL is unavailable "
                                          f"({type(exc).__name__})") from None
            if self._usable(conn):
                return conn
            self._went_down("it hung up", conn)  # restarting, or only this backend was ended
            conn.close()  # the pool discards a closed connection and opens another
            self._pool.putconn(conn)

    def _usable(self, conn: psycopg.Connection[Row]) -> bool:
        """Whether the server is still there for this idle connection. An idle connection
        has nothing to read unless the server said goodbye (FATAL: terminating connection)
        or closed it: one poll of its socket, no round trip. Something to read is checked
        with an empty statement, which a live connection answers (a notice, say)."""
        if conn.closed:
            return False
        if not _readable(conn.fileno()):
            return True
        try:
            conn.execute("")
        except self._errors:
            return False
        return True

    def _went_down(self, why: str, conn: psycopg.Connection[Row] | None = None) -> None:
        """Said once per outage: a connection that has served no call since the last outage
        began, and breaks after the server came back, broke in that outage, already said (one
        pg_terminate_backend was logged as one outage per connection in use at that
        moment)."""
        with self._state:
            if self._down_since is not None:
                return
            if conn is not None and self._good.get(conn, 0.0) < self._last_down:
                return
            self._down_since = self._last_down = time.monotonic()
        log.warning("PostgreSQL is unavailable (%s): calls fail fast until it answers", why)

    def _came_back(self) -> None:
        if self._down_since is None:  # the common case: no lock
            return
        with self._state:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("PostgreSQL is available again after %.1f s", time.monotonic() - since)


def _readable(fd: int) -> bool:
    """Whether a socket has something to read now (never waits)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows: no poll, no fd-number limit


def _why_not(url: str, psycopg: Any) -> str:
    """Why one direct connection fails, as libpq put it (`role "x" does not exist`, `password
    authentication failed`): a wrong password or database name must not read as an outage to
    wait out. libpq never quotes the password; it is cut out all the same."""
    try:
        psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0].rpartition("failed: ")[2].strip()
        for secret in _passwords(url, psycopg):
            reason = reason.replace(secret, "[password]")
        if stray := _after_at(url):  # libpq took it for the host's start, and quotes it
            reason = reason.replace(f"{stray}@", "[password]@")
        return f": {reason}" if reason else f" ({type(exc).__name__})"
    return ""


def _after_at(url: str) -> str:
    """What follows the first @ of a password with an unescaped @ in it, whatever its length:
    libpq ends the password there and reads the rest as the host's start."""
    with contextlib.suppress(ValueError):
        return (urlsplit(url).password or "").partition("@")[2]
    return ""


def _passwords(url: str, psycopg: Any) -> list[str]:
    """The password of `url` in each spelling an error may quote it: as libpq reads it, and as
    written (a URL libpq cannot parse, a stray `%` in it, has its password quoted whole)."""
    found = []
    with contextlib.suppress(Exception):  # the error being explained may be this parse's
        found.append(psycopg.conninfo.conninfo_to_dict(url).get("password") or "")
    with contextlib.suppress(ValueError):
        written = urlsplit(url).password or ""
        # An unescaped @ ends it for libpq, which then quotes the rest as part of the host.
        found += [written, unquote(written), *written.split("@")]
    found += re.findall(r"password\s*=\s*'?([^'\s]+)", url)  # key=value conninfo
    return sorted({p for p in found if len(p) >= 4}, key=len, reverse=True)
