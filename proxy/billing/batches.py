"""Files and batches for the OpenAI-compatible Batch API, in the billing database.

A batch's items are ordinary jobs (jobs.py) tagged with the batch id and their custom_id, so
they are leased, retried, billed and survive restarts like any job. Output and error files
are not copies: their content is read from the batch's jobs when asked for. A batch is written
in steps while `validating` (no item of it is claimed meanwhile) and then opened at once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.billing import journal
from proxy.billing.db import (
    Cursor,
    Database,
    DatabaseUnavailable,
    SqliteDatabase,
)
from proxy.billing.queue_cap import make_room

MAX_REQUESTS = 50_000  # at most 0x10000: item ids number the items in 4 hex digits
WINDOW_S = {"24h": 24 * 3600}
STAGE_ROWS = 100  # a staged batch's items written per transaction
# Between them: other requests' writes waiting for the database take their turn (a Python
# lock is not first come, first served: the next chunk would take it straight back).
STAGE_PAUSE_S = 0.002
# Rows per INSERT on PostgreSQL: psycopg converts a statement's placeholders once, then from
# its cache, only if it has at most 50 parameters; a 100-row INSERT's 900 were converted
# again every step, 10 ms of Python holding the GIL, half the CPU of writing a batch.
PG_ROWS = 5
STALE_S = 3600  # a batch still `validating` this long after its creation was left by a crash
# A cancel the API call has not finished after this long was cut short by a crash: the
# finalize round finishes it (a cancel of 50,000 items takes about 2 s on SQLite, 8 s on
# PostgreSQL).
CANCEL_CUT_S = 20


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    key_id: str
    purpose: str
    filename: str
    size: int
    created_at: int
    content: bytes | None = None
    batch_id: str | None = None  # set for a batch's output and error files


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    key_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    total: int
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    errors: bytes = b""  # JSONL lines for input lines that could not be queued
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int | None] = field(default_factory=dict)


_FILE = "id, key_id, purpose, filename, bytes, created_at, content, batch_id"
_BATCH = ("id, key_id, endpoint, input_file_id, completion_window, status, total, created_at, "
          "expires_at, metadata, errors, output_file_id, error_file_id, in_progress_at, "
          "finalizing_at, completed_at, cancelling_at, cancelled_at")
_TIMES = ("in_progress_at", "finalizing_at", "completed_at", "cancelling_at", "cancelled_at")


def _file(row: tuple[Any, ...]) -> StoredFile:
    return StoredFile(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]),
                      bytes(row[6]) if row[6] is not None else None, row[7])


def _batch(row: tuple[Any, ...]) -> Batch:
    return Batch(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), int(row[7]),
                 int(row[8]), json.loads(row[9]) if row[9] else None,
                 bytes(row[10]) if row[10] else b"", row[11], row[12],
                 {name: (int(v) if v is not None else None)
                  for name, v in zip(_TIMES, row[13:], strict=True)})


class Batches:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add_file(self, key_id: str, purpose: str, filename: str, content: bytes | None,
                 size: int | None = None, batch_id: str | None = None) -> StoredFile:
        stored = StoredFile("file-" + secrets.token_hex(12), key_id, purpose, filename,
                            len(content) if content is not None else size or 0,
                            int(time.time()), content, batch_id)
        _insert_file(self._db, stored)
        return stored

    def file(self, file_id: str, key_id: str) -> StoredFile | None:
        """The file with its content: on SQLite read aside, off the shared connection (a
        50,000-line input file held it 20-40 ms, every other request waiting)."""
        sql = f"SELECT {_FILE} FROM files WHERE id = ? AND key_id = ?"
        rows = self._db.query_aside(sql, (file_id, key_id)) \
            if isinstance(self._db, SqliteDatabase) else self._db.query(sql, (file_id, key_id))
        return _file(rows[0]) if rows else None

    def set_size(self, file_id: str, size: int) -> None:
        """Record a batch result file's size once its content was first rendered."""
        self._db.execute("UPDATE files SET bytes = ? WHERE id = ?", (size, file_id))

    def create(self, key_id: str, endpoint: str, input_file_id: str, window: str,
               metadata: dict[str, str] | None, items: list[tuple[str, bytes]],
               errors: bytes, most: int | None = None) -> Batch:
        """The batch and one queued job per valid item (custom_id, request JSON): staged,
        then opened."""
        return self.open(self.stage(key_id, endpoint, input_file_id, window, metadata, items,
                                    errors, most))

    def stage(self, key_id: str, endpoint: str, input_file_id: str, window: str,
              metadata: dict[str, str] | None, items: list[tuple[str, bytes]],
              errors: bytes, most: int | None = None, traceparent: str | None = None) -> Batch:
        """The batch, `validating`, with its items as queued jobs no worker claims before it
        is opened. Written STAGE_ROWS items per transaction, each followed by a pause as long
        as it took, so a 50,000-item batch never holds SQLite's one writer for long nor most
        of the time (on SQLite, each step's pages go back to the database file in its pause,
        off the shared connection); gone again if a write fails. QueueFull, and nothing
        written, if the items would take the key past `most` (queue_cap.py). Each item keeps
        the `traceparent` of the request that made the batch."""
        now = int(self._db.clock())  # its items' run_after, which claims compare on it
        batch = Batch("batch_" + secrets.token_hex(12), key_id, endpoint, input_file_id, window,
                      "validating", len(items), now, now + WINDOW_S[window], metadata, errors)
        with self._db.transaction() as cur:
            make_room(cur, self._db.engine, key_id, len(items), most)
            _insert_batch(cur, batch)
        try:
            self._write_items(batch, items, traceparent)
        except BaseException:
            with contextlib.suppress(DatabaseUnavailable):
                self.discard(batch.id)
            raise
        return batch

    def _write_items(self, batch: Batch, items: list[tuple[str, bytes]],
                     traceparent: str | None) -> None:
        """STAGE_ROWS items a transaction, each followed by a pause as long as it took."""
        stem = secrets.token_hex(4)  # of the batch's item ids (_items_insert)
        per = PG_ROWS if self._db.engine == "postgres" else STAGE_ROWS
        for start in range(0, len(items), STAGE_ROWS):
            # Made before the transaction: nobody waits for the database meanwhile.
            statements = [_items_insert(batch, (stem, at), items[at:at + per], traceparent)
                          for at in range(start, min(start + STAGE_ROWS, len(items)), per)]
            began = time.monotonic()
            with self._db.transaction() as cur:
                for sql, args in statements:
                    cur.execute(sql, args)
            self._pause(began)

    def open(self, batch: Batch, into: Cursor | None = None) -> Batch:
        """A staged batch's items may run from now: in the transaction `into` if given (an
        Idempotency-Key's). Without it, tried again, an open whose answer was lost (its commit
        made) finds the batch open, not a failure: the client told 503 would create the batch
        again, and both would run and be billed (db.until_known tries again)."""
        if into is not None:
            return self._open(into, batch)
        with self._db.transaction() as cur:  # a lost commit shows as ConnectionLost
            return self._open(cur, batch)

    def _open(self, on: Cursor | Database, batch: Batch) -> Batch:
        on.execute("UPDATE batches SET in_progress_at = ?, status = CASE WHEN cancelling_at "
                   "IS NULL THEN 'in_progress' ELSE 'cancelling' END "
                   "WHERE id = ? AND status = 'validating'", (int(time.time()), batch.id))
        rows = on.query(f"SELECT {_BATCH} FROM batches WHERE id = ?", (batch.id,))
        if not rows:
            raise LookupError(f"batch {batch.id} was discarded while it was written")
        return _batch(rows[0])

    def discard(self, batch_id: str) -> None:
        """A staged batch that will not be opened, with its items."""
        with self._db.transaction() as cur:
            if cur.execute("DELETE FROM batches WHERE id = ? AND status = 'validating'",
                           (batch_id,)) == 1:
                cur.execute("DELETE FROM jobs WHERE batch_id = ?", (batch_id,))

    def discard_stale(self, now: float | None = None) -> int:
        """Batches a process that died left half written (STALE_S on): how many."""
        rows = self._db.query("SELECT id FROM batches WHERE status = 'validating' AND "
                              "created_at < ?", (int((now or self._db.clock()) - STALE_S),))
        for (batch_id,) in rows:
            self.discard(batch_id)
        return len(rows)

    def get(self, batch_id: str, key_id: str | None = None) -> Batch | None:
        where, args = ("id = ? AND key_id = ?", (batch_id, key_id)) if key_id else \
            ("id = ?", (batch_id,))
        rows = self._db.query(f"SELECT {_BATCH} FROM batches WHERE {where}", args)
        return _batch(rows[0]) if rows else None

    def of_key(self, key_id: str, limit: int = 20, after: str | None = None) -> list[Batch]:
        rows = self._db.query(f"SELECT {_BATCH} FROM batches WHERE key_id = ? "
                              f"ORDER BY created_at DESC, id DESC", (key_id,))
        batches = [_batch(row) for row in rows]
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        return batches[:limit]

    def counts(self, batch_id: str) -> dict[str, int]:
        """Job states of a batch's items: queued, processing, succeeded, failed, cancelled."""
        rows = self._db.query("SELECT state, COUNT(*) FROM jobs WHERE batch_id = ? "
                              "GROUP BY state", (batch_id,))
        return {state: int(n) for state, n in rows}

    def cancel(self, batch_id: str) -> None:
        """Items not yet started will not run; started ones finish: running now, or handed
        back to the queue by a stopping process with an upstream task to take up (its submit
        journaled with the reply: paid for upstream, polled, not sent again). Then the batch
        ends. The batch is `cancelling` first, and no claim takes a queued item of it with
        nothing to take up from then on (jobs.py: claim_many); such items end in steps
        (cancel_queued), a synchronous call a stop cut off written to the ledger as
        abandoned, as a crash's are.
        A batch still `validating` (its items being written) keeps the cancel for `open`,
        which opens it `cancelling`."""
        now = int(time.time())
        self._db.execute("UPDATE batches SET cancelling_at = ? WHERE id = ? AND "
                         "status = 'validating' AND cancelling_at IS NULL", (now, batch_id))
        if self._db.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? "
                            "WHERE id = ? AND status = 'in_progress'", (now, batch_id)):
            self.cancel_queued(batch_id)

    def cancel_queued(self, batch_id: str) -> int:
        """End a cancelling batch's unstarted items, STAGE_ROWS a transaction, each followed by
        a pause as long as it took: in one transaction, 50,000 items held SQLite's shared
        connection (every request's ledger write) for 0.6-0.8 s. Also run by the finalize
        round, for a cancel a crash cut short. How many items it ended."""
        # By primary key: on `state` SQLite's planner took the jobs_runnable index and walked
        # every queued job of every batch for each step (9 ms a step at 50,000); unary + keeps
        # it off that index (PostgreSQL has statistics, and no + for text).
        queued = "+state = 'queued'" if self._db.engine == "sqlite" else "state = 'queued'"
        ended = 0
        while True:
            # Read first: a round that finds nothing (started items left) writes nothing.
            ids = [str(row[0]) for row in self._db.query(
                f"SELECT id FROM jobs WHERE batch_id = ? AND state = 'queued' AND "
                f"{journal.UNSTARTED} LIMIT ?", (batch_id, STAGE_ROWS))]
            if not ids:
                return ended
            began = time.monotonic()
            # Each re-checked in the write: a claim may have taken it since.
            where = f"id IN ({', '.join('?' * len(ids))}) AND {queued} AND {journal.UNSTARTED}"
            with self._db.transaction() as cur:
                journal.settle(cur, f"SELECT id FROM jobs WHERE {where}", ids)
                ended += cur.execute(f"UPDATE jobs SET state = 'cancelled', finished_at = ? "
                                     f"WHERE {where}", (int(time.time()), *ids))
            if len(ids) < STAGE_ROWS:
                return ended
            self._pause(began)

    def _pause(self, began: float) -> None:
        """After a step that began at `began`: as long again as it took, so a bulk write
        takes at most half of the database's time, whatever the disk's speed; other writes
        get the rest. The step's pages are copied back meanwhile, off the shared connection."""
        wrote = time.monotonic() - began
        if isinstance(self._db, SqliteDatabase):
            self._db.checkpoint()
        time.sleep(max(STAGE_PAUSE_S, began + 2 * wrote - time.monotonic()))

    def open_batches(self) -> list[Batch]:
        rows = self._db.query(f"SELECT {_BATCH} FROM batches "
                              f"WHERE status IN ('in_progress', 'cancelling')")
        return [_batch(row) for row in rows]

    def finalize(self, batch_id: str) -> bool:
        """End the batch once all its items have: completed (cancelled, if it was being
        cancelled), with its output and error files. The first UPDATE claims it, so however
        many processes try at once, one finalizes it in this transaction and the rest find it
        ended (or its items not all ended): False."""
        now = int(time.time())
        with self._db.transaction() as cur:
            if cur.execute("UPDATE batches SET finalizing_at = ? WHERE id = ? AND status IN "
                           "('in_progress', 'cancelling') AND NOT EXISTS (SELECT 1 FROM jobs "
                           "WHERE batch_id = ? AND state IN ('queued', 'processing'))",
                           (now, batch_id, batch_id)) != 1:
                return False
            ((key_id, status, errors),) = cur.query("SELECT key_id, status, errors FROM "
                                                    "batches WHERE id = ?", (batch_id,))
            counts = {str(state): int(n) for state, n in cur.query(
                "SELECT state, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY state",
                (batch_id,))}
            failed = counts.get("failed", 0) + counts.get("cancelled", 0) or errors
            output = _result(key_id, batch_id, "output", now) if counts.get("succeeded") \
                else None
            error = _result(key_id, batch_id, "error", now) if failed else None
            for stored in (output, error):
                if stored is not None:
                    _insert_file(cur, stored)
            done = "cancelled" if status == "cancelling" else "completed"
            cur.execute(f"UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, "
                        f"{done}_at = ? WHERE id = ?",
                        (done, output.id if output else None, error.id if error else None,
                         now, batch_id))
        return True

    def items(self, batch_id: str, succeeded: bool) -> list[tuple[str, str, int, bytes]]:
        """(job id, custom_id, status, response) of the batch's finished items."""
        states = ("succeeded",) if succeeded else ("failed", "cancelled")
        rows = self._db.query(
            f"SELECT id, custom_id, status, response, state FROM jobs WHERE batch_id = ? AND "
            f"state IN ({', '.join('?' * len(states))}) ORDER BY created_at, id",
            (batch_id, *states))
        return [(r[0], r[1], int(r[2]) if r[2] is not None else 0,
                 bytes(r[3]) if r[3] is not None else b"") for r in rows]


def _insert_batch(cur: Cursor, batch: Batch) -> None:
    cur.execute(
        "INSERT INTO batches (id, key_id, endpoint, input_file_id, completion_window, "
        "status, total, created_at, expires_at, metadata, errors) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (batch.id, batch.key_id, batch.endpoint, batch.input_file_id, batch.completion_window,
         batch.status, batch.total, batch.created_at, batch.expires_at,
         json.dumps(batch.metadata) if batch.metadata is not None else None, batch.errors))


def _items_insert(batch: Batch, first: tuple[str, int], items: list[tuple[str, bytes]],
                  traceparent: str | None = None) -> tuple[str, list[Any]]:
    """One INSERT of many rows (STAGE_ROWS, or PG_ROWS), SQL and arguments: one statement
    and round trip for many items.

    Item ids are ordered within a batch (`first`: its stem, and this step's first index),
    so a step's rows go to a few neighbouring pages of the jobs' primary key index: random
    ids dirtied a page each, 120 pages a step against 34, and each step's transaction took
    about twice as long. They look like any job id and keep 48 random bits each (job ids are
    looked up with their key anyway)."""
    (stem, start), now, kind = first, batch.created_at, batch.endpoint.rsplit("/", 1)[-1]
    return ("INSERT INTO jobs (id, key_id, endpoint, request, state, run_after, created_at, "
            "batch_id, custom_id, traceparent) VALUES " +
            ", ".join(["(?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)"] * len(items)),
            [value for index, (custom_id, request) in enumerate(items, start) for value in (
                f"imgjob_{stem}{index:04x}{secrets.token_hex(6)}", batch.key_id, kind,
                request, now, now, batch.id, custom_id, traceparent)])


def _insert_file(cur: Cursor, stored: StoredFile) -> None:
    cur.execute(f"INSERT INTO files ({_FILE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (stored.id, stored.key_id, stored.purpose, stored.filename, stored.size,
                 stored.created_at, stored.content, stored.batch_id))


def _result(key_id: str, batch_id: str, kind: str, now: int) -> StoredFile:
    """A batch's output or error file: its content is read from the batch's jobs."""
    return StoredFile("file-" + secrets.token_hex(12), key_id, f"batch_{kind}",
                      f"{batch_id}_{kind}.jsonl", 0, now, batch_id=batch_id)
