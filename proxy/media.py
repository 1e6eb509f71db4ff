"""Images served by URL: stored under the data directory, readable only through signed links.

`response_format=url` must work whatever the upstream returned, and the URL must point at
Switchyard itself. A link carries its expiry and an HMAC over name and expiry; without a valid
signature the file does not exist as far as a client can tell.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
MIME_TYPES = {ext: mime for mime, ext in EXTENSIONS.items()}


def load_or_create_secret(path: Path) -> bytes:
    """The URL-signing secret: made once per data directory, readable by its owner only."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


class MediaStore:
    """Stores image bytes and mints signed, expiring links to them."""

    def __init__(self, root: Path, secret: bytes, ttl_s: int) -> None:
        self._root = root
        self._secret = secret
        self.ttl_s = ttl_s
        root.mkdir(parents=True, exist_ok=True)

    async def put(self, data: bytes, mime: str) -> str:
        """Store an image; returns its name (random, with the format as extension)."""
        name = f"{secrets.token_urlsafe(18)}.{EXTENSIONS.get(mime, 'bin')}"
        await asyncio.to_thread((self._root / name).write_bytes, data)
        return name

    def link(self, base_url: str, name: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"{base_url}/images/{name}?expires={expires}&sig={self._sign(name, expires)}"

    def _sign(self, name: str, expires: int) -> str:
        message = f"{name}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, name: str, expires: str, signature: str, now: float | None = None) -> bool:
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._sign(name, int(expires)), signature)

    async def read(self, name: str) -> bytes | None:
        if "/" in name or name.startswith("."):
            return None
        path = self._root / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    def sweep(self, now: float | None = None) -> int:
        """Delete files older than the link lifetime; returns how many. Run off the event loop."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        removed = 0
        for path in self._root.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
