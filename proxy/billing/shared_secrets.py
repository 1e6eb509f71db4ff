"""Secrets a fleet shares, kept once in the billing database: the URL-signing key and the
webhook signing secret, the same for every replica.

Whichever replica comes first stores its candidate; the rest read that one. INSERT … ON
CONFLICT DO NOTHING and then a read make this race-free on either engine: two replicas that
start together both read the one row that won.
"""

from __future__ import annotations

import time

from proxy.billing.db import Database, retry_lost


def shared_secret(db: Database, name: str, candidate: bytes) -> bytes:
    """The secret called `name`: `candidate` if none was stored yet, else the stored one.
    Idempotent, so a call whose connection broke under it is simply tried again."""
    def fetch() -> bytes:
        db.execute("INSERT INTO shared_secrets (name, value, created_at) VALUES (?, ?, ?) "
                   "ON CONFLICT (name) DO NOTHING", (name, candidate, int(time.time())))
        rows = db.query("SELECT value FROM shared_secrets WHERE name = ?", (name,))
        return bytes(rows[0][0])

    return retry_lost(fetch)
