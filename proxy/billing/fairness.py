"""Which queued jobs to claim next: keys take turns, so one key's big batch cannot starve
another key's single job.

The key with the fewest jobs running (across every process: the count is the database's) gets
the next job, and the next after that again goes to whoever then has the fewest; ties go to the
key waiting longest. A key alone in the queue gets all it asks. So a tenant's one async job
queued behind another tenant's 50,000 batch items is the next claimed, and two batches share
the hosts half and half however large each is. Within a key, jobs go oldest first.

Cheap at any queue length: the keys are found with one index probe each (a recursive query
over jobs_turns: state, key_id, run_after), and each key's due jobs with one more, so 50,000
queued items cost no more than 50. A batch still being written (`validating`) holds queued
items nobody may claim yet, all with the second it was created as their run_after: a key's
due jobs are read around those seconds (index ranges that end before them and start after),
and its single jobs due in exactly such a second are found among the queued single jobs
(batch_id IS NULL), where filtering the items out row by row read all 50,000 every look
(13 ms on SQLite, holding its one connection, every 0.25 s while a big batch was written).
Items of the key's open batches due in that very second wait until the batch opens.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence

from proxy.billing.db import Cursor

# Each key with queued jobs and the run_after of its oldest (one index probe per key).
_KEYS = """
WITH RECURSIVE queued(key_id) AS (
  SELECT (SELECT key_id FROM jobs WHERE state = 'queued' ORDER BY key_id LIMIT 1)
  UNION ALL
  SELECT (SELECT key_id FROM jobs WHERE state = 'queued' AND key_id > queued.key_id
          ORDER BY key_id LIMIT 1)
  FROM queued WHERE queued.key_id IS NOT NULL)
SELECT key_id, (SELECT run_after FROM jobs WHERE state = 'queued' AND jobs.key_id =
                queued.key_id ORDER BY run_after LIMIT 1)
FROM queued WHERE key_id IS NOT NULL
"""
MAX_TERMS = 400  # SELECTs in the due jobs' UNION ALL (SQLite takes 500 at most)
_STAGING = "SELECT key_id, created_at FROM batches WHERE status = 'validating'"
# A key's single jobs due in one second. `|| ''` and `+ 0` keep both engines off the
# indexes that lead with key_id and run_after: those would read every item of a batch being
# written in that second; jobs_batch (batch_id, state) reads the queued single jobs alone.
_SAME_SECOND = ("SELECT id, key_id, run_after FROM (SELECT id, key_id, run_after FROM jobs "
                "WHERE batch_id IS NULL AND state = 'queued' AND key_id || '' = ? AND "
                "run_after + 0 = ? ORDER BY id LIMIT ?) AS s{n}")
_RUNNING = "SELECT key_id, COUNT(*) FROM jobs WHERE state = 'processing' GROUP BY key_id"
_OVERDUE = "SELECT id, key_id FROM jobs WHERE state = 'processing' AND lease_until < ?"
# A key's due jobs in a range of run_after (ends excluded), oldest first; none of a batch
# still being written (batches.py: stage).
_DUE = ("SELECT id, key_id, run_after FROM (SELECT id, key_id, run_after FROM jobs WHERE "
        "state = 'queued' AND key_id = ? AND run_after > ? AND run_after < ? AND (batch_id "
        "IS NULL OR batch_id NOT IN (SELECT id FROM batches WHERE status = 'validating')) "
        "ORDER BY run_after LIMIT ?) AS k{n}")


def due_in_turn(cur: Cursor, now_s: int, limit: int, skip: Collection[str] = ()) -> list[str]:
    """Up to `limit` ids of runnable jobs, none of `skip`'s keys, in the order they should
    run: first those whose worker's lease ran out (they were due long ago), then queued
    ones due by `now_s`, keys taking turns."""
    overdue = [job for job, key in cur.query(_OVERDUE, (now_s,)) if key not in skip][:limit]
    left = limit - len(overdue)
    if left <= 0:
        return overdue
    keys = [(key, first) for key, first in cur.query(_KEYS)
            if first is not None and int(first) <= now_s and key not in skip]
    if not keys:
        return overdue
    running = {str(key): int(n) for key, n in cur.query(_RUNNING)}
    # Only the `left` keys with the fewest running can get a turn in this claim.
    keys.sort(key=lambda pair: (running.get(pair[0], 0), int(pair[1])))
    chosen = [key for key, _ in keys[:left]]
    staging: dict[str, set[int]] = {}
    for key, created in cur.query(_STAGING):
        staging.setdefault(str(key), set()).add(int(created))
    # Within SQLite's 500 terms of one compound SELECT: past MAX_TERMS, a key's staged
    # items are left out row by row again (slower, never wrong: _DUE filters them too).
    budget = MAX_TERMS - len(chosen)
    cuts: dict[str, list[int]] = {}
    for key in chosen:
        mine = sorted(t for t in staging.get(key, ()) if t <= now_s)
        if 2 * len(mine) <= budget:
            cuts[key], budget = mine, budget - 2 * len(mine)
    ranges = [(key, low, high) for key in chosen
              for low, high in _around(cuts.get(key, ()), now_s)]
    seconds = [(key, t) for key in chosen for t in cuts.get(key, ())]
    rows = cur.query(
        " UNION ALL ".join([_DUE.format(n=n) for n in range(len(ranges))]
                           + [_SAME_SECOND.format(n=n) for n in range(len(seconds))]),
        [arg for key, low, high in ranges for arg in (key, low, high, left)]
        + [arg for key, t in seconds for arg in (key, t, left)])
    due: dict[str, list[str]] = {key: [] for key in chosen}
    for job, key, _ in sorted(rows, key=lambda row: int(row[2])):  # stable: oldest first
        due[key].append(job)
    return overdue + in_turn(due, running, left)


def _around(seconds: Collection[int], now_s: int) -> list[tuple[int, int]]:
    """The ranges of run_after (both ends excluded) up to `now_s`, around the `seconds` of
    batches still being written."""
    cuts = sorted(t for t in seconds if t <= now_s)
    lows = [-1, *cuts]
    highs = [*cuts, now_s + 1]
    return [(low, high) for low, high in zip(lows, highs, strict=True) if high > low + 1]


def in_turn(due: Mapping[str, Sequence[str]], running: Mapping[str, int],
            limit: int) -> list[str]:
    """Up to `limit` of the `due` jobs (each key's oldest first; keys in order of their
    oldest, for ties), each next one from the key with the fewest `running` (counting those
    already chosen)."""
    turns = [(running.get(key, 0), rank, key) for rank, key in enumerate(due) if due[key]]
    heapq.heapify(turns)
    taken: dict[str, int] = {}
    chosen: list[str] = []
    while turns and len(chosen) < limit:
        busy, rank, key = heapq.heappop(turns)
        n = taken.get(key, 0)
        chosen.append(due[key][n])
        taken[key] = n + 1
        if n + 1 < len(due[key]):
            heapq.heappush(turns, (busy + 1, rank, key))
    return chosen
