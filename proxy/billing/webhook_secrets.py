"""Each tenant key's Standard Webhooks signing secret: made with the key, shown once, rotated
on demand, and what the key's job webhooks are signed with.

Unlike the key itself (stored as a digest), a secret must sign, so it is kept as it is in
api_keys, beside the key's row: whoever can read the billing database can read it. A key made
before keys had secrets of their own has none: its webhooks stay signed with the fleet's
secret (proxy/shared.py), so its receivers keep working, until its secret is rotated. A
rotation may keep the secret before it signing too for a grace period: each webhook then
carries two signatures (Standard Webhooks' space-separated list), so a receiver can move to
the new secret at its own pace; a grace of 0 ends the old secret at once.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass

from proxy.billing.db import Database

GRACE_S = 24 * 3600  # a rotated-out secret signs beside the new one this long, by default
MAX_GRACE_HOURS = 24 * 30
SECRET_BYTES = 32


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@dataclass(frozen=True, slots=True)
class KeySecrets:
    current: str | None  # None: a key from before keys had their own; the fleet's signs
    previous: str | None = None  # the one rotated out (None: it was the fleet's)
    previous_until: int | None = None  # while it still signs (epoch s); None: it does not

    def signing(self, fleet: str, now: float) -> list[str]:
        """The secrets a webhook is signed with now, the current one first."""
        found = [self.current or fleet]
        if self.previous_until is not None and now < self.previous_until:
            old = self.previous or fleet
            if old not in found:
                found.append(old)
        return found

    def __repr__(self) -> str:  # never a secret in a log line or a traceback
        return f"KeySecrets(own={self.current is not None}, until={self.previous_until})"


class WebhookSecrets:
    def __init__(self, db: Database) -> None:
        self._db = db

    def of_key(self, key_id: str) -> KeySecrets | None:
        rows = self._db.query("SELECT webhook_secret, webhook_secret_old, webhook_old_until "
                              "FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            return None
        current, previous, until = rows[0]
        return KeySecrets(current, previous, int(until) if until is not None else None)

    def rotate(self, key_id: str, grace_s: float = GRACE_S,
               now: float | None = None) -> tuple[str, int | None] | None:
        """A new secret for an active key, and until when the one before it still signs
        beside it (None: it stopped now). None if there is no active key with that id."""
        now = time.time() if now is None else now
        secret, until = new_secret(), int(now + grace_s) if grace_s > 0 else None
        # The right-hand sides read the row as it was: the old secret moves to _old.
        changed = self._db.execute(
            "UPDATE api_keys SET webhook_secret_old = webhook_secret, webhook_old_until = ?, "
            "webhook_secret = ? WHERE id = ? AND revoked_at IS NULL", (until, secret, key_id))
        return (secret, until) if changed == 1 else None
