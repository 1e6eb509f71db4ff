"""Tenant API keys: how they look, how they are hashed, and how a request's key is checked.

Keys are random 256-bit tokens with a recognisable prefix. Only a SHA-256 digest is stored: the
key's own entropy makes a slow password hash unnecessary, and the digest is an index.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from cachetools import TTLCache

PREFIX = "sy-"


PERIODS: tuple[str, ...] = ("total", "monthly", "daily")


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What a key may do and spend. None means "no limit" (or "not set")."""

    allowed_models: tuple[str, ...] | None = None  # public model names; None: every model
    strategy: str | None = None  # the key's default routing strategy
    plan: str | None = None  # the price plan it pays by; None: the default plan
    budget_usd: Decimal | None = None
    budget_period: str = "total"  # total | monthly | daily (UTC)
    rpm: int | None = None  # requests per minute
    ipm: int | None = None  # images per minute
    concurrency: int | None = None  # requests in flight at once


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key, never its plain text."""

    id: str
    name: str
    tenant: str
    hint: str
    created_at: int
    revoked_at: int | None = None
    limits: KeyLimits = KeyLimits()

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def hint(key: str) -> str:
    """What listings show instead of the key: enough to tell keys apart, useless to an attacker."""
    return f"{key[:7]}…{key[-4:]}"


class KeyFinder:
    """The store's key lookup with a short-lived cache in front.

    The cache keeps the hot path off the database; its one-second life bounds how long a key
    revoked from another process (the CLI) keeps working.
    """

    def __init__(self, store: KeyLookup, ttl_s: float = 1.0) -> None:
        self._store = store
        self._cache: TTLCache[str, KeyRecord] = TTLCache(maxsize=10_000, ttl=ttl_s)

    async def find(self, key: str) -> KeyRecord | None:
        wanted = digest(key)
        record = self._cache.get(wanted)
        if record is None:
            found = await asyncio.to_thread(self._store.find_key, wanted)
            if found is None or not hmac.compare_digest(found[0], wanted):
                return None
            record = found[1]
            if record.active:
                self._cache[wanted] = record
        return record if record.active else None

    def forget(self, key_hash: str) -> None:
        """Drop a cached key now: a revocation inside this process takes effect at once."""
        self._cache.pop(key_hash, None)


class KeyLookup(Protocol):
    """What KeyFinder needs of a store: (stored digest, record) by digest."""

    def find_key(self, key_hash: str) -> tuple[str, KeyRecord] | None: ...
