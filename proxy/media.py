"""Images served by URL: kept in an image store, readable only through signed links.

`response_format=url` must work whatever the upstream returned, and the URL must point at
Switchyard itself. A link carries its expiry and an HMAC over name and expiry; without a valid
signature the image does not exist as far as a client can tell. Where the bytes live is the
store's business (proxy/shared.py picks one): the data directory of one server, or the
billing database a fleet shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from proxy.billing.images import StoredImage

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
MIME_TYPES = {ext: mime for mime, ext in EXTENSIONS.items()}
_EXPIRES = re.compile(r"[0-9]{1,12}")


def load_or_create_secret(path: Path) -> bytes:
    """A secret made once per data directory, readable by its owner only. Made whole before
    it appears (a hard link does not replace a file), so processes that start together all
    read the one that won, never a half-written one."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink()
    return path.read_bytes()


class ImageStore(Protocol):
    """Where the images behind links are kept. Synchronous: MediaStore calls it off the
    event loop. Names are new and unique (MediaStore makes them)."""

    def put(self, name: str, data: bytes, mime: str) -> None: ...
    def read(self, name: str) -> StoredImage | None: ...
    def sweep(self, now: float | None = None) -> int:
        """Delete the images past the link lifetime; returns how many."""


class DirectoryImages:
    """One file per image in a folder of the data directory (one server, or `serve
    --workers N`, shares it)."""

    def __init__(self, root: Path, ttl_s: int) -> None:
        self._root = root
        self._ttl_s = ttl_s
        root.mkdir(mode=0o700, parents=True, exist_ok=True)  # a link is the only way in

    def put(self, name: str, data: bytes, mime: str) -> None:
        fd = os.open(self._root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def read(self, name: str) -> StoredImage | None:
        if "/" in name or name.startswith("."):
            return None
        try:
            data = (self._root / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return StoredImage(data, MIME_TYPES.get(name.rpartition(".")[2],
                                                "application/octet-stream"))

    def sweep(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - self._ttl_s
        removed = 0
        for path in self._root.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process swept it first
                continue
        return removed


def _wall_clock() -> float:
    return time.time()


class MediaStore:
    """Stores image bytes and mints signed, expiring links to them."""

    def __init__(self, images: ImageStore, secret: bytes, ttl_s: int,
                 clock: Callable[[], float] | None = None) -> None:
        self._images = images
        self._secret = secret
        self.ttl_s = ttl_s
        # A fleet's links expire on its database's clock, whichever replica minted or checks
        # them (replicas' own clocks may disagree).
        self._clock = clock or _wall_clock

    async def put(self, data: bytes, mime: str) -> str:
        """Store an image; returns its name (random, with the format as extension)."""
        name = f"{secrets.token_urlsafe(18)}.{EXTENSIONS.get(mime, 'bin')}"
        await asyncio.to_thread(self._images.put, name, data, mime)
        return name

    def link(self, base_url: str, name: str, now: float | None = None) -> str:
        expires = int((self._clock() if now is None else now) + self.ttl_s)
        return f"{base_url}/images/{name}?expires={expires}&sig={self._sign(name, expires)}"

    def _sign(self, name: str, expires: int) -> str:
        message = f"{name}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, name: str, expires: str, signature: str, now: float | None = None) -> bool:
        # ASCII digits, and few: "²".isdigit() is true, and int() refuses 5,000 digits.
        if not _EXPIRES.fullmatch(expires) or int(expires) < (self._clock() if now is None
                                                                  else now):
            return False
        return hmac.compare_digest(self._sign(name, int(expires)), signature)

    async def read(self, name: str) -> StoredImage | None:
        return await asyncio.to_thread(self._images.read, name)

    def sweep(self, now: float | None = None) -> int:
        """Delete images older than the link lifetime; returns how many. Run off the event
        loop. Idempotent: every replica of a fleet may run it."""
        return self._images.sweep(now)
