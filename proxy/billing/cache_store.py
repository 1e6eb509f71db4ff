"""The response cache's entries, kept in the billing database: one row per cached answer, so
every replica of a fleet (one PostgreSQL) finds what any replica stored.

A row holds one answer whole (its images' base64 and what was said about them, as the
request path packed it), its size in bytes, when it expires and when it was last used (in
microseconds: the order least-recently-used eviction follows). The rows together are kept
under a byte bound: each put first drops the expired rows, then the least recently used until
the rest fit. Eviction that races another replica's deletes what is already gone, which
changes nothing. Synchronous: the request path calls it off the event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from proxy.billing.db import Database, retry_lost

EVICT_CHUNK = 64  # rows read at a time while looking for the ones to evict


@dataclass(frozen=True, slots=True)
class Found:
    body: bytes
    created_at: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class Stored:
    """What a put did: whether the entry is in, and how many entries it pushed out."""

    kept: bool
    evicted: int
    total_bytes: int  # the cache's size after it, as this put saw it


def _now_us() -> int:
    return time.time_ns() // 1000


class CacheStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, key: str, not_before: int, now: float | None = None) -> Found | None:
        """The entry under `key` if it has not expired and was made at or after `not_before`
        (Unix seconds: the asker's freshness bound); marks it used."""
        clock = time.time() if now is None else now
        rows = self._db.query("SELECT body, created_at FROM cache_entries WHERE key = ? "
                              "AND expires_at > ? AND created_at >= ?",
                              (key, int(clock), not_before))
        if not rows:
            return None
        retry_lost(lambda: self._db.execute("UPDATE cache_entries SET used_at = ? WHERE key = ?",
                                            (_now_us(), key)))
        return Found(bytes(rows[0][0]), int(rows[0][1]))

    def put(self, key: str, scope: str, model: str, body: bytes, ttl_s: int,
            max_bytes: int) -> Stored:
        """Keep `body` under `key` for `ttl_s` seconds (replacing what was there), then evict
        down to `max_bytes`. An entry bigger than the whole bound is not kept."""
        if len(body) > max_bytes:
            return Stored(False, 0, self.total_bytes())
        now = int(time.time())
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
            cur.execute("INSERT INTO cache_entries (key, scope, model, body, bytes, created_at, "
                        "expires_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, scope, model, body, len(body), now, now + ttl_s, _now_us()))
        evicted, total = self.evict(max_bytes, now)
        return Stored(True, evicted, total)

    def evict(self, max_bytes: int, now: float | None = None) -> tuple[int, int]:
        """Drop expired entries, then the least recently used until the rest hold at most
        `max_bytes`; (entries dropped, bytes left)."""
        clock = int(time.time() if now is None else now)
        dropped = retry_lost(lambda: self._db.execute(
            "DELETE FROM cache_entries WHERE expires_at <= ?", (clock,)))
        total = self.total_bytes()
        while total > max_bytes:
            rows = self._db.query("SELECT key, bytes FROM cache_entries ORDER BY used_at, key "
                                  f"LIMIT {EVICT_CHUNK}")
            if not rows:
                break
            for key, size in rows:
                if total <= max_bytes:
                    break
                dropped += self._drop(str(key))
                total -= int(size)
            total = self.total_bytes()
        return dropped, total

    def _drop(self, key: str) -> int:
        return retry_lost(lambda: self._db.execute("DELETE FROM cache_entries WHERE key = ?",
                                                   (key,)))

    def total_bytes(self) -> int:
        rows = self._db.query("SELECT COALESCE(SUM(bytes), 0) FROM cache_entries")
        return int(rows[0][0])
