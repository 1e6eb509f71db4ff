"""Tenant API keys: how they look, how they are hashed, and how a request's key is checked.

Keys are random 256-bit tokens with a recognisable prefix. Only a SHA-256 digest is stored: the
key's own entropy makes a slow password hash unnecessary, and the digest is an index.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from cachetools import TTLCache

PREFIX = "sy-"


PERIODS: tuple[str, ...] = ("total", "monthly", "daily")
# What the database's columns hold: budgets are stored in micro-dollars as 64-bit integers,
# rates and concurrency as 32-bit ones.
MAX_BUDGET_USD = 1_000_000_000
MAX_COUNT = 2**31 - 1


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
    # Keep and reuse its answers this long (seconds; 0: never), unless a request says
    # otherwise; None: its models decide (proxy/api/caching.py).
    cache_ttl_s: int | None = None
    lane: str | None = None  # "discount": wait for a discount lane only; "standard": never


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

    def forget_id(self, key_id: str) -> None:
        """Drop a key from the cache by id (the admin API knows ids, not digests), so a
        revocation, rotation or new limit takes effect on the next request."""
        for cached_hash, record in list(self._cache.items()):
            if record.id == key_id:
                self._cache.pop(cached_hash, None)


class KeyLookup(Protocol):
    """What KeyFinder needs of a store: (stored digest, record) by digest."""

    def find_key(self, key_hash: str) -> tuple[str, KeyRecord] | None: ...


class LimitError(ValueError):
    """A key setting that is not valid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


LIMIT_FIELDS = ("allowed_models", "strategy", "plan", "budget_usd", "budget_period", "rpm",
                "ipm", "concurrency", "cache_ttl_s", "lane")
LANES = ("discount", "standard")  # as route.lane (proxy/api/policy.py)
MAX_CACHE_TTL_S = 30 * 86400  # as catalog.MAX_CACHE_TTL_S


def parse_limits(data: Mapping[str, Any], base: KeyLimits,
                 strategies: tuple[str, ...]) -> KeyLimits:
    """`base` with the settings in `data` applied (JSON from the admin API, or CLI flags);
    null clears a setting. Raises LimitError naming the first bad field."""
    values = {name: getattr(base, name) for name in LIMIT_FIELDS}
    for name, value in data.items():
        if name not in LIMIT_FIELDS:
            raise LimitError(name, f"unknown key setting {name!r} (known: "
                                   f"{', '.join(LIMIT_FIELDS)})")
        values[name] = _limit(name, value, strategies)
    if values["budget_period"] is None:
        values["budget_period"] = "total"
    return KeyLimits(**values)


def _limit(name: str, value: Any, strategies: tuple[str, ...]) -> Any:
    if value is None:
        return None
    if name == "allowed_models":
        if not isinstance(value, list | tuple) or not all(isinstance(m, str) and m
                                                          for m in value):
            raise LimitError(name, "allowed_models must be a list of model names")
        return tuple(value)
    choices = {"strategy": strategies, "budget_period": PERIODS, "lane": LANES}.get(name)
    if choices is not None:
        if value not in choices:
            raise LimitError(name, f"{name} must be one of {', '.join(choices)}")
        return value
    if name == "plan":
        if not isinstance(value, str) or not value:
            raise LimitError(name, "plan must be a plan name from routes/plans.toml")
        return value
    if name == "budget_usd":
        try:
            amount = Decimal(str(value)) if not isinstance(value, bool) else None
        except ArithmeticError:
            amount = None
        if amount is None or not amount.is_finite() or not 0 <= amount <= MAX_BUDGET_USD:
            raise LimitError(name, f"budget_usd must be a number of US dollars from 0 to "
                                   f"{MAX_BUDGET_USD}")
        return amount
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer includes 1.0
    if name == "cache_ttl_s":
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 0 <= value <= MAX_CACHE_TTL_S:
            raise LimitError(name, f"cache_ttl_s must be an integer from 0 to "
                                   f"{MAX_CACHE_TTL_S} (seconds; 0: never cache)")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise LimitError(name, f"{name} must be an integer from 1 to {MAX_COUNT}")
    return value


def describe(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API and `keys show` present it: never the key itself."""
    limits = record.limits
    return {
        "id": record.id, "name": record.name, "tenant": record.tenant, "hint": record.hint,
        "created_at": record.created_at, "revoked_at": record.revoked_at,
        "active": record.active,
        "allowed_models": list(limits.allowed_models) if limits.allowed_models is not None
        else None,
        "strategy": limits.strategy, "plan": limits.plan,
        "budget_usd": format(limits.budget_usd.normalize(), "f")
        if limits.budget_usd is not None else None,
        "budget_period": limits.budget_period, "rpm": limits.rpm, "ipm": limits.ipm,
        "concurrency": limits.concurrency, "cache_ttl_s": limits.cache_ttl_s,
        "lane": limits.lane,
    }
