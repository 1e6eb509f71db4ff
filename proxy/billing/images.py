"""Images behind signed links, kept in the billing database: the image store of a fleet on
PostgreSQL, where any replica serves an image that any replica stored.

One row per image (name, MIME type, bytes, expiry); the sweep deletes the rows past their
expiry, and deleting what is already gone changes nothing, so every replica may sweep. Expiries
are written and compared on the database's clock (Database.clock): a replica whose own clock
runs ahead must not delete images whose links the others still honour.
proxy/media.py signs the links; a name is only ever read after its link checked out.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.billing.db import Database, retry_lost


@dataclass(frozen=True, slots=True)
class StoredImage:
    data: bytes
    mime: str


class Images:
    def __init__(self, db: Database, ttl_s: int) -> None:
        self._db = db
        self._ttl_s = ttl_s

    def put(self, name: str, data: bytes, mime: str) -> None:
        """Store an image under a new, unique name for the link lifetime."""
        self._db.execute("INSERT INTO images (name, mime, data, expires_at) VALUES (?, ?, ?, ?)",
                         (name, mime, data, int(self._db.clock()) + self._ttl_s))

    def read(self, name: str) -> StoredImage | None:
        rows = self._db.query("SELECT data, mime FROM images WHERE name = ?", (name,))
        return StoredImage(bytes(rows[0][0]), str(rows[0][1])) if rows else None

    def sweep(self, now: float | None = None) -> int:
        """Delete the images past their expiry; returns how many."""
        cutoff = int(self._db.clock() if now is None else now)
        return retry_lost(lambda: self._db.execute("DELETE FROM images WHERE expires_at < ?",
                                                   (cutoff,)))
