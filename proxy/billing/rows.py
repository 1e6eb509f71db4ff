"""A ledger row (Entry) and the SQL that writes it, on both engines: one row per request id,
and a success is never replaced."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row: a request's outcome, what it was billed and what it cost upstream."""

    request_id: str
    key_id: str
    tenant: str
    model: str
    provider: str | None
    route: str | None
    tier: str
    n_asked: int
    n_delivered: int
    billed_micros: int
    upstream_micros: int
    latency_ms: int
    outcome: str  # success | cache_hit | coalesced | a failure class
    failure: str | None
    attempts: int
    upstream_id: str | None
    idempotency_key: str | None
    created_at: int


# The outcomes of a request that was answered and billed: a host's images, the response
# cache's, or those of an identical request in flight (proxy/api/caching.py).
BILLED: tuple[str, ...] = ("success", "cache_hit", "coalesced")
# A queued job's id, which is also its ledger row's request id (every run of it settles there).
JOB_PREFIX = "imgjob_"
BILLED_SQL = "(" + ", ".join(f"'{outcome}'" for outcome in BILLED) + ")"
FIELDS = tuple(Entry.__dataclass_fields__)
LEDGER_COLUMNS = ", ".join(FIELDS)
# One row per request id. A success is never replaced (a request is billed once); anything
# else (a cancelled run of a job that ran again, say) gives way to the later outcome. It
# changes no row when the request's success is already there: then nothing more is billed.
LEDGER_INSERT = (f"INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES "
                  f"({', '.join('?' * len(Entry.__dataclass_fields__))}) "
                  f"ON CONFLICT (request_id) DO UPDATE SET "
                  + ", ".join(f"{c} = excluded.{c}" for c in Entry.__dataclass_fields__
                              if c != "request_id")
                  + f" WHERE ledger.outcome NOT IN {BILLED_SQL}")
MARK = "UPDATE ledger SET delivered_at = ? WHERE request_id = ?"
# A job's success settled where an earlier run's success, never delivered, is the row already
# (that run's commit made, its answer lost): the row becomes this run's, billed once, so the
# earlier run's late refused write (money.Money._refused, which tells its own row by its time,
# latency and upstream id) no longer takes it for its own and unbills it. Its time stays: the
# bill went into the budget window of that time, and no refused write of a later run (whose
# time differs) takes the row for its own either.
ADOPT = (f"UPDATE ledger SET latency_ms = ?, upstream_id = ? WHERE "
         f"request_id = ? AND outcome IN {BILLED_SQL} AND delivered_at IS NULL")


def adopting(entry: Entry) -> tuple[Any, ...] | None:
    """ADOPT's arguments for `entry`, if it is a job's success (only a job has runs)."""
    if entry.outcome not in BILLED or not entry.request_id.startswith(JOB_PREFIX):
        return None
    return (entry.latency_ms, entry.upstream_id, entry.request_id)
_ROW = f"({', '.join('?' * len(FIELDS))})"


@functools.cache
def ledger_insert_rows(count: int) -> str:
    """LEDGER_INSERT for `count` rows in one statement. Its row count is how many rows it
    wrote: one less for each request whose success was there already."""
    return LEDGER_INSERT.replace(f"VALUES {_ROW}", "VALUES " + ", ".join([_ROW] * count), 1)


@functools.cache
def billed_among(count: int) -> str:
    """The request ids, of `count` given, whose success is in the ledger already."""
    return (f"SELECT request_id FROM ledger WHERE outcome IN {BILLED_SQL} "
            f"AND request_id IN ({', '.join('?' * count)})")


def padded(items: Sequence[T]) -> list[T]:
    """`items` made as long as the next power of two by repeating the last: an IN list of
    any length (up to a writer batch's 64) in one of a handful of statement texts."""
    if not items:
        return []
    return [*items, *[items[-1]] * ((1 << (len(items) - 1).bit_length()) - len(items))]


@functools.cache
def mark_rows(count: int) -> str:
    """MARK for `count` request ids in one statement."""
    return MARK.replace("request_id = ?", f"request_id IN ({', '.join('?' * count)})", 1)


# Rows a statement writes at most: 32 ledger rows bind 576 values, under the 999 that SQLite
# allowed before 3.32.
MOST_ROWS = 32


def in_runs(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """`items` in runs of powers of two up to MOST_ROWS, longest first (a batch of 23: 16, 4,
    2, 1), so a statement for every count is a handful of texts that stay prepared."""
    start, left = 0, len(items)
    while left:
        size = min(MOST_ROWS, 1 << (left.bit_length() - 1))
        yield items[start:start + size]
        start, left = start + size, left - size
# A request's settle: its reservation (None without a budget), its row, its budget window.
Settle = tuple[str | None, Entry, str | None]


@dataclass(frozen=True, slots=True)
class Delivered:
    """A request's delivered mark, written with the settles it goes with (write_each)."""

    request_id: str


def lock_order(write: Settle | Delivered) -> tuple[int, str, str]:
    """One order for every transaction: settles by key and window (each locks its key's
    budget row: two batches that took two keys' rows in opposite orders deadlocked on
    PostgreSQL), then the marks."""
    if isinstance(write, Delivered):
        return 1, "", ""
    _, entry, period = write
    return 0, entry.key_id, period or ""
