"""PostgreSQL's settles and reservations in one round trip each (PostgresDatabase.script).

Written out for PostgreSQL (SQLite has no writes in WITH): a settle's budget window, or its
reservation's move into `spent`, follows from its ledger row inside one statement, and a
reservation is taken where it fits inside another, so no statement waits for the answer to
the one before. Each statement of a round trip of its own cost about 0.1 ms of CPU in psycopg:
a settle took five (BEGIN, the row, the window, the mark, COMMIT).
"""

from __future__ import annotations

from typing import Any

from proxy.billing.rows import (
    ADOPT,
    FIELDS,
    LEDGER_INSERT,
    MARK,
    Delivered,
    Settle,
    adopting,
    lock_order,
)

Statement = tuple[str, tuple[Any, ...]]

# The row, then the budget window's `spent` (or the reservation's move into it) only if the
# row was written.
_PG_ROW = f"WITH written AS ({LEDGER_INSERT} RETURNING 1) "
_PG_SPENT = (_PG_ROW + "INSERT INTO budget_counters (key_id, period, spent_micros) "
             "SELECT ?, ?, ? FROM written ON CONFLICT (key_id, period) DO UPDATE SET "
             "spent_micros = budget_counters.spent_micros + excluded.spent_micros")
# A hold the sweep released meanwhile (it outlived any request, by this replica's clock or
# another's) is gone: what was billed then goes into `spent` as without one.
_PG_CLOSE = (_PG_ROW + ", held AS (DELETE FROM reservations WHERE id = ? "
             "RETURNING key_id, period, amount_micros), moved AS (UPDATE budget_counters "
             "SET reserved_micros = reserved_micros - held.amount_micros, "
             "spent_micros = spent_micros + CASE WHEN EXISTS (SELECT 1 FROM written) THEN ? ELSE 0 "
             "END FROM held WHERE budget_counters.key_id = held.key_id "
             "AND budget_counters.period = held.period RETURNING 1) "
             "INSERT INTO budget_counters (key_id, period, spent_micros) SELECT ?, ?, ? "
             "FROM written WHERE NOT EXISTS (SELECT 1 FROM held) AND ? > 0 "
             "ON CONFLICT (key_id, period) DO UPDATE SET "
             "spent_micros = budget_counters.spent_micros + excluded.spent_micros")
# ... and a reservation: the window's row made if need be, then the hold only where it fits.
_PG_WINDOW = ("INSERT INTO budget_counters (key_id, period) VALUES (?, ?) "
              "ON CONFLICT (key_id, period) DO NOTHING")
_PG_HOLD = ("WITH fits AS (UPDATE budget_counters SET reserved_micros = reserved_micros + ? "
            "WHERE key_id = ? AND period = ? AND {fits} RETURNING 1) "
            "INSERT INTO reservations (id, key_id, period, amount_micros, created_at, "
            "expires_at, ticket, claim) SELECT ?, ?, ?, ?, ?, ?, ?, ? FROM fits RETURNING id")
# ... after the holds of the same queued request that runs no longer holding it left
# (money.Money.reserve).
_PG_RELEASE_TICKET = ("WITH gone AS (DELETE FROM reservations WHERE ticket = ? AND claim IS "
                      "DISTINCT FROM (SELECT claim_token FROM jobs WHERE id = ?) "
                      "RETURNING key_id, period, amount_micros), summed AS (SELECT key_id, "
                      "period, SUM(amount_micros) AS amount FROM gone GROUP BY key_id, period) "
                      "UPDATE budget_counters SET reserved_micros = reserved_micros - "
                      "summed.amount FROM summed WHERE budget_counters.key_id = summed.key_id "
                      "AND budget_counters.period = summed.period")


def settles(writes: list[Settle | Delivered], when: int) -> list[Statement]:
    """The writes as PostgreSQL statements that need no answer from one another, in the
    order Money._write_all writes them in on SQLite."""
    statements: list[Statement] = []
    for write in sorted(writes, key=lock_order):
        if isinstance(write, Delivered):
            statements.append((MARK, (when, write.request_id)))
            continue
        reservation, entry, period = write
        row = tuple(getattr(entry, name) for name in FIELDS)
        if reservation is not None:
            statements.append((_PG_CLOSE, (*row, reservation, entry.billed_micros,
                                           entry.key_id, period, entry.billed_micros,
                                           entry.billed_micros if period is not None else 0)))
        elif period is not None and entry.billed_micros:
            statements.append((_PG_SPENT, (*row, entry.key_id, period, entry.billed_micros)))
        else:
            statements.append((LEDGER_INSERT, row))
        if (adopted := adopting(entry)) is not None:  # after it: the row it met, committed
            statements.append((ADOPT, adopted))
    return statements


def reservation(reservation_id: str, key_id: str, period: str, amount_micros: int,
                budget_micros: int | None, now: int, expires: int | None,
                ticket: str | None = None, claim: str | None = None) -> list[Statement]:
    """A hold of `amount_micros` where it fits the budget (any, without one), for the run
    `claim` of `ticket`, replacing the holds of runs that no longer hold it; the script's
    last statement answers a row only if it was taken."""
    fits = "TRUE" if budget_micros is None else "spent_micros + reserved_micros + ? <= ?"
    over = () if budget_micros is None else (amount_micros, budget_micros)
    earlier = [(_PG_RELEASE_TICKET, (ticket, ticket))] if ticket is not None else []
    return [*earlier, (_PG_WINDOW, (key_id, period)),
            (_PG_HOLD.format(fits=fits), (amount_micros, key_id, period, *over, reservation_id,
                                          key_id, period, amount_micros, now, expires, ticket,
                                          claim))]
