"""A key's cap on queued work: its unfinished async jobs and batch items together.

Without it one tenant could fill the queue (and the database) for everyone. The check runs in
the transaction that queues the new work, with the key's other queueing shut out meanwhile
(SQLite's write lock; on PostgreSQL a lock on the key's row), so two requests at once cannot
both squeeze under the cap.
"""

from __future__ import annotations

from proxy.billing.db import Cursor

# Jobs not finished (queued or running), and the items a batch being written has still to
# write (its rows so far are among the jobs already).
_UNFINISHED = """
SELECT (SELECT COUNT(*) FROM jobs WHERE key_id = ? AND state IN ('queued', 'processing'))
     + (SELECT COALESCE(SUM(total), 0) FROM batches WHERE key_id = ? AND status = 'validating')
     - (SELECT COUNT(*) FROM jobs WHERE batch_id IN
          (SELECT id FROM batches WHERE key_id = ? AND status = 'validating'))
"""


class QueueFull(Exception):
    """Queueing `adding` more would take the key past its cap."""

    def __init__(self, queued: int, adding: int, most: int) -> None:
        super().__init__(f"{queued} queued, {adding} more asked, at most {most}")
        self.queued = queued
        self.adding = adding
        self.most = most


def make_room(cur: Cursor, engine: str, key_id: str, adding: int, most: int | None) -> None:
    """Raise QueueFull unless the key's unfinished jobs and batch items plus `adding` fit in
    `most` (None: no cap). Call it in the transaction that then queues them."""
    if most is None:
        return
    if engine == "postgres":  # SQLite's transactions already take the write lock first
        cur.query("SELECT id FROM api_keys WHERE id = ? FOR UPDATE", (key_id,))
    ((queued,),) = cur.query(_UNFINISHED, (key_id, key_id, key_id))
    if int(queued) + adding > most:
        raise QueueFull(int(queued), adding, most)
