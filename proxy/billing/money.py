"""Budgets and the ledger: reserve a quote before the upstream call, settle or release after.

A reservation is one conditional UPDATE (spent + reserved + quote <= budget), so concurrent
requests can never overspend, on SQLite or PostgreSQL, in one process or many. Settling writes
the request's ledger row and moves the reservation to `spent` in the same transaction: a
response that reached a client has its row, and no row is written twice (the request id is
the ledger's key). Reservations a crashed process left behind are released by `sweep`.

Settling is idempotent (a request whose success is in the ledger is billed nothing more), so a
settle whose connection broke is tried again; one the database refused is answered as an
error, and its hold is released, with a $0 row, as soon as the database is back (deferred.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from proxy import ids
from proxy.billing import pg_money
from proxy.billing.amounts import usd
from proxy.billing.db import (
    Conflict,
    ConnectionLost,
    Cursor,
    Database,
    DatabaseUnavailable,
    retry_lost,
)
from proxy.billing.deferred import Deferred
from proxy.billing.rows import (
    ADOPT,
    BILLED,
    BILLED_SQL,
    FIELDS,
    LEDGER_COLUMNS,
    LEDGER_INSERT,
    MARK,
    Delivered,
    Entry,
    Settle,
    adopting,
    billed_among,
    in_runs,
    ledger_insert_rows,
    lock_order,
    mark_rows,
    padded,
)

if TYPE_CHECKING:
    from proxy.billing.postgres import PostgresDatabase

UNAVAILABLE = "database_unavailable"  # the outcome of a request whose settle was refused


class Money:
    def __init__(self, db: Database, deferred: Deferred | None = None) -> None:
        self._db = db
        self._deferred = deferred if deferred is not None else Deferred()
        # PostgreSQL's one-round-trip transactions (pg_money); None on SQLite.
        self._script = cast("PostgresDatabase", db).script if db.engine == "postgres" else None

    def reserve(self, key_id: str, period: str, amount_micros: int,
                budget_micros: int | None, hold_s: float | None = None,
                ticket: str | None = None, claim: str | None = None) -> str | None:
        """Hold `amount` of the key's budget for `period`; None if it would overspend.
        Keys without a budget are reserved too, so `spent` is right if one is set later.
        `hold_s`: how long the hold must outlive a crash (a batch item at a deferred host
        settles hours later); None: as long as any request can run. With `ticket` and
        `claim` (the run `claim` of a queued request) the holds of its runs that no longer
        hold the job are released first, in the same transaction: a run whose replica died,
        or whose lease ran out, never settles its own, and a batch item's lives a day (two
        holds for one item refused one the budget covered once). The hold of the run that
        holds the job stays, even when a stale run reserves."""
        def once() -> str | None:
            reservation = ids.ordered("res_")
            try:
                return self._reserve(reservation, key_id, period, amount_micros,
                                     budget_micros, hold_s, ticket, claim)
            except ConnectionLost as exc:
                # It may have been committed: it is given back before another try (or,
                # if the database refuses, once it is back, and no more tries).
                if not self._given_back(reservation):
                    raise DatabaseUnavailable(str(exc)) from None
                raise

        return retry_lost(once)

    def _given_back(self, reservation: str) -> bool:
        """Release a hold now if the database lets us, else once it is back."""
        try:
            self.release(reservation)
        except DatabaseUnavailable:
            self._deferred.add(self.release, reservation)
            return False
        return True

    def _reserve(self, reservation: str, key_id: str, period: str, amount_micros: int,
                 budget_micros: int | None, hold_s: float | None,
                 ticket: str | None, claim: str | None) -> str | None:
        now = int(self._db.clock())  # the sweep compares it on its own replica
        expires = now + int(hold_s) if hold_s is not None else None
        if self._script is not None:  # one round trip, where each statement took one
            held = self._script(pg_money.reservation(reservation, key_id, period, amount_micros,
                                                     budget_micros, now, expires, ticket,
                                                     claim))
            return reservation if held else None
        with self._db.transaction() as cur:
            if ticket is not None:
                for (earlier,) in cur.query(
                        "SELECT id FROM reservations WHERE ticket = ? AND claim IS NOT "
                        "(SELECT claim_token FROM jobs WHERE id = ?)", (ticket, ticket)):
                    _close(cur, str(earlier), 0)
            cur.execute("INSERT INTO budget_counters (key_id, period) VALUES (?, ?) "
                        "ON CONFLICT (key_id, period) DO NOTHING", (key_id, period))
            if budget_micros is None:
                cur.execute("UPDATE budget_counters SET reserved_micros = reserved_micros + ? "
                            "WHERE key_id = ? AND period = ?", (amount_micros, key_id, period))
            elif cur.execute(
                    "UPDATE budget_counters SET reserved_micros = reserved_micros + ? "
                    "WHERE key_id = ? AND period = ? "
                    "AND spent_micros + reserved_micros + ? <= ?",
                    (amount_micros, key_id, period, amount_micros, budget_micros)) != 1:
                return None
            cur.execute("INSERT INTO reservations (id, key_id, period, amount_micros, "
                        "created_at, expires_at, ticket, claim) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (reservation, key_id, period, amount_micros, now, expires, ticket,
                         claim))
        return reservation

    def settle(self, reservation: str | None, entry: Entry, period: str | None = None) -> None:
        """Write the ledger row and turn the reservation into what was billed (nothing, for a
        failure): one transaction. A key without a budget reserves nothing; with `period`,
        what it was billed is still added to that window's `spent`.

        Idempotent. A connection that broke under it (it may have been committed) gets it
        tried again (retry_lost); if the database refuses it, DatabaseUnavailable is raised (the
        request answers an error, billed nothing) and, once the database is back, the hold
        is released and the row written at $0 (outcome `database_unavailable`)."""
        try:
            retry_lost(lambda: self._settle(reservation, entry, period))
        except DatabaseUnavailable:
            self._deferred.add(self._refused, reservation, unbilled(entry), period)
            raise

    def write_each(self, writes: list[Settle | Delivered]) -> list[BaseException | None]:
        """Settles and delivered marks the ledger writer took together, in one transaction
        (one commit, and its pages, for all). If the database refuses it, each is refused as
        `settle` or `delivered` refuses one; if it fails otherwise (a conflict with another
        transaction too), each is written alone, so a request fails only for its own row."""
        if len(writes) > 1 or self._script is not None:  # there one round trip anyway
            try:
                retry_lost(lambda: self._write_all(writes, int(time.time())))
                return [None] * len(writes)
            except (Conflict, _RowByRow):
                pass  # each alone, below
            except DatabaseUnavailable as exc:
                return [self._kept(write, exc) for write in writes]
            except Exception:  # each alone, below: only its own row fails a request
                pass
        return [_met(self._write_one, write) for write in writes]

    def write_now(self, writes: list[Settle | Delivered],
                  windows: Sequence[tuple[str, str]] = ()) -> list[tuple[Decimal, Decimal]]:
        """write_each's one transaction, on the caller's thread and only if the database is
        free this instant (db.Busy, or any other error, if not: nothing was written, and
        write_each is the way to write them); with `spent` of each (key id, period) of
        `windows`, read in it."""
        with self._db.transaction_now() as cur:
            self._write_in(cur, writes, int(time.time()))
            return [_spent_in(cur, key_id, period) for key_id, period in windows]

    def _write_all(self, writes: list[Settle | Delivered], when: int) -> None:
        if self._script is not None:  # one round trip, where each statement took one
            self._script(pg_money.settles(writes, when))
            return
        with self._db.transaction() as cur:
            self._write_in(cur, writes, when)

    def _write_in(self, cur: Cursor, writes: list[Settle | Delivered], when: int) -> None:
        """In one order for every transaction: the settles by key and window (each locks its
        key's budget row: two batches that took two keys' rows in opposite orders deadlocked
        on PostgreSQL), then the marks."""
        ordered = sorted(writes, key=lock_order)
        settles = [write for write in ordered if not isinstance(write, Delivered)]
        marked = [write.request_id for write in ordered if isinstance(write, Delivered)]
        self._settle_all(cur, settles)
        if marked:  # one statement: a repeated id in an IN list changes nothing
            cur.execute(mark_rows(len(padded(marked))), (when, *padded(marked)))

    def _settle_all(self, cur: Cursor, settles: list[Settle]) -> None:
        """The settles' rows in a few statements, not one each: every statement let the
        writer thread hand the GIL to the event loop and take it back (at 2 KB x 64, one
        statement less per request cut 5% of the server's CPU). A request whose success is
        in the ledger already is billed nothing more, its hold given back, as `settle` does;
        a request twice in one batch goes row by row, each row seeing the one before, and
        one alone (a lone request's write on the loop) too: its INSERT's row count says
        whether it was billed already, with no SELECT before it."""
        ids = [entry.request_id for _, entry, _ in settles]
        if len(ids) == 1 or len(set(ids)) != len(ids):
            for settle in settles:
                self._settle_in(cur, *settle)
            return
        asked = padded(ids)
        billed = {row[0] for row in cur.query(billed_among(len(asked)), asked)} if ids else set()
        fresh = [settle for settle in settles if settle[1].request_id not in billed]
        written = sum(cur.execute(ledger_insert_rows(len(run)), _values(run))
                      for run in in_runs(fresh))
        if written != len(fresh):  # never under the write lock; should it be, row by row
            raise _RowByRow
        for reservation, entry, period in settles:
            if entry.request_id not in billed:
                self._billed(cur, reservation, entry, period)
                continue
            _adopt(cur, entry)
            if reservation is not None:
                _close(cur, reservation, 0)

    def _write_one(self, write: Settle | Delivered) -> None:
        if isinstance(write, Delivered):
            self.delivered(write.request_id)
        else:
            self.settle(*write)

    def _kept(self, write: Settle | Delivered, exc: DatabaseUnavailable) -> BaseException | None:
        """A write the database refused, kept for when it is back: a mark quietly, a settle
        refused (its request answers an error), as alone."""
        if isinstance(write, Delivered):
            self._deferred.add(self._mark, write.request_id, int(time.time()))
            return None
        reservation, entry, period = write
        self._deferred.add(self._refused, reservation, unbilled(entry), period)
        return DatabaseUnavailable(str(exc))

    def _refused(self, reservation: str | None, entry: Entry, period: str | None) -> None:
        """The settle of a request that answered an error, once the database is back. If the
        first try had committed before its answer was lost, the client was billed for an
        error: that row, never delivered, is turned into the unbilled one and its bill taken
        back out of `spent`. Only that row: every run of a job settles under the job's id, and
        the row may be that of a run that took the job up again since, its success billed (it
        is told by its own time, latency and upstream id)."""
        with self._db.transaction() as cur:
            if entry.outcome == UNAVAILABLE:
                rows = cur.query("SELECT billed_micros FROM ledger WHERE request_id = ? AND "
                                 f"outcome IN {BILLED_SQL} AND delivered_at IS NULL AND "
                                 "created_at = ? AND latency_ms = ? AND "
                                 "COALESCE(upstream_id, '') = COALESCE(?, '')",
                                 (entry.request_id, entry.created_at, entry.latency_ms,
                                  entry.upstream_id))
                if rows:
                    cur.execute("UPDATE ledger SET outcome = ?, failure = ?, n_delivered = 0, "
                                "billed_micros = 0 WHERE request_id = ?",
                                (UNAVAILABLE, UNAVAILABLE, entry.request_id))
                    if period is not None and int(rows[0][0]):
                        cur.execute("UPDATE budget_counters SET spent_micros = spent_micros - ? "
                                    "WHERE key_id = ? AND period = ?",
                                    (int(rows[0][0]), entry.key_id, period))
            self._settle_in(cur, reservation, entry, period)

    def _settle(self, reservation: str | None, entry: Entry, period: str | None) -> None:
        with self._db.transaction() as cur:
            self._settle_in(cur, reservation, entry, period)

    def _settle_in(self, cur: Cursor, reservation: str | None, entry: Entry,
                   period: str | None) -> None:
        # Its fields in order (astuple would deep-copy each one first).
        if not cur.execute(LEDGER_INSERT, tuple(getattr(entry, name) for name in FIELDS)):
            # This request's success is in the ledger already: it is billed nothing more.
            _adopt(cur, entry)
            if reservation is not None:
                _close(cur, reservation, 0)
            return
        self._billed(cur, reservation, entry, period)

    def _billed(self, cur: Cursor, reservation: str | None, entry: Entry,
                period: str | None) -> None:
        """After the row is written: its hold becomes what was billed, or (a key with a
        budget window and no hold, or whose hold the sweep released meanwhile) what was
        billed is added to the window."""
        if reservation is not None and _close(cur, reservation, entry.billed_micros):
            return
        if period is not None and entry.billed_micros:
            cur.execute("INSERT INTO budget_counters (key_id, period, spent_micros) "
                        "VALUES (?, ?, ?) ON CONFLICT (key_id, period) DO UPDATE SET "
                        "spent_micros = budget_counters.spent_micros + "
                        "excluded.spent_micros", (entry.key_id, period, entry.billed_micros))

    def release(self, reservation: str) -> None:
        """Give a hold back unbilled (nothing if it was settled or released already)."""
        with self._db.transaction() as cur:
            _close(cur, reservation, 0)

    def delivered(self, request_id: str) -> None:
        """The response was handed to the client's connection. A success row without this
        was written but its response never left (the process died in between)."""
        try:
            self._mark(request_id, int(time.time()))
        except DatabaseUnavailable:
            self._deferred.add(self._mark, request_id, int(time.time()))

    def _mark(self, request_id: str, when: int) -> None:
        self._db.execute(MARK, (when, request_id))

    def sweep(self, older_than_s: float) -> int:
        """Release reservations older than any request can live (left by a crash), or past
        the hold they were made with."""
        now = int(self._db.clock())
        stale = self._db.query("SELECT id FROM reservations WHERE (expires_at IS NULL AND "
                               "created_at < ?) OR expires_at < ?",
                               (now - int(older_than_s), now))
        for (reservation,) in stale:
            self.release(reservation)
        return len(stale)

    def spent(self, key_id: str, period: str) -> tuple[Decimal, Decimal]:
        """(spent, reserved) in US dollars for a key's budget window."""
        return _spent_in(self._db, key_id, period)

    def entry(self, request_id: str) -> Entry | None:
        rows = self._db.query(f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE request_id = ?",
                              (request_id,))
        return Entry(*rows[0]) if rows else None


class _RowByRow(Exception):
    """A batch's rows met a request already billed: written again one by one, each as
    `settle` writes it (that one billed nothing more)."""


def _values(settles: Sequence[Settle]) -> list[Any]:
    """The fields of the settles' rows in order, one row after another (astuple would
    deep-copy each one first)."""
    return [getattr(entry, name) for _, entry, _ in settles for name in FIELDS]


def _spent_in(cur: Cursor, key_id: str, period: str) -> tuple[Decimal, Decimal]:
    rows = cur.query("SELECT spent_micros, reserved_micros FROM budget_counters "
                     "WHERE key_id = ? AND period = ?", (key_id, period))
    return (usd(int(rows[0][0])), usd(int(rows[0][1]))) if rows else (Decimal(0), Decimal(0))


def _met(call: Callable[..., None], *args: Any) -> BaseException | None:
    """What `call(*args)` raised, or None."""
    try:
        call(*args)
    except Exception as exc:
        return exc
    return None


def unbilled(entry: Entry) -> Entry:
    """A request's row once its settle was refused: the client got an error, so nothing is
    billed (what the upstream charged stays on record); a failure's row is kept as it is."""
    if entry.outcome not in BILLED:
        return entry
    return replace(entry, outcome=UNAVAILABLE, failure=UNAVAILABLE, n_delivered=0,
                   billed_micros=0)


def _adopt(cur: Cursor, entry: Entry) -> None:
    if (args := adopting(entry)) is not None:
        cur.execute(ADOPT, args)


def _close(cur: Cursor, reservation: str, billed_micros: int) -> bool:
    """Move a reservation's amount out of `reserved`, and what was billed into `spent`.
    The reservation's row goes first, as in pg_money's settle: a release
    and a settle of one hold then meet on that row (one of them finds it gone) and take the
    rows they share in one order. A read, then an update, then the delete let a release
    racing a settle free the hold twice, and lock the rows in the other order (deadlock).
    (A reservation's row never changes: what the read sees is what the delete removes.)
    False if it was gone: settled, or released by the sweep (or just now, by another
    transaction)."""
    rows = cur.query("SELECT key_id, period, amount_micros FROM reservations WHERE id = ?",
                     (reservation,))
    if not rows or cur.execute("DELETE FROM reservations WHERE id = ?", (reservation,)) != 1:
        return False
    key_id, period, amount = rows[0]
    cur.execute("UPDATE budget_counters SET reserved_micros = reserved_micros - ?, "
                "spent_micros = spent_micros + ? WHERE key_id = ? AND period = ?",
                (int(amount), billed_micros, key_id, period))
    return True
