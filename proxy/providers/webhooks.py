"""Standard Webhooks signatures (Replicate signs its webhooks this way).

`webhook-signature` holds space-separated `v1,<base64 HMAC-SHA256>` values over
"{webhook-id}.{webhook-timestamp}.{raw body}", keyed with the base64-decoded part of the
`whsec_…` secret; a timestamp outside the tolerance is a replay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

TOLERANCE_S = 300.0


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,` signature a sender computes (used by the fakes and the tests)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


def sign_all(secrets: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature` with one `v1,` signature per secret, space-separated: a receiver
    that knows any one of them accepts it (a rotation's grace period)."""
    return " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets)


def verify(headers: Mapping[str, str], body: bytes, secret: str, now: float,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """True only for a genuine, fresh Standard Webhooks delivery."""
    found = {name.lower(): value for name, value in headers.items()}
    webhook_id, stamp = found.get("webhook-id", ""), found.get("webhook-timestamp", "")
    if not (webhook_id and stamp.isdigit() and secret) or abs(now - int(stamp)) > tolerance_s:
        return False
    try:
        expected = sign(secret, webhook_id, int(stamp), body).encode()
    except (binascii.Error, ValueError):
        return False
    return any(hmac.compare_digest(candidate.encode(), expected)
               for candidate in found.get("webhook-signature", "").split())
