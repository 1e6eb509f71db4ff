"""Frozen configuration from an optional TOML file and SWITCHYARD_* environment variables.

Precedence: command-line flags > environment > config file > defaults. Secrets are wrapped so
that no repr, log line or traceback ever shows them.
"""

from __future__ import annotations

import base64
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from proxy.egress import Network, allow_list


class ConfigError(ValueError):
    """A configuration problem, reported at startup with a message that says how to fix it."""


# uvicorn's choices for `serve --loop` and `--http` (and the benchmarks that start serve);
# `auto` takes uvloop and httptools (dependencies; not on Windows for uvloop).
LOOPS = ("auto", "asyncio", "uvloop")
HTTP_PARSERS = ("auto", "h11", "httptools")


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that never prints itself."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "switchyard"


def default_routes_dir() -> Path:
    """The catalog shipped in the wheel, or the repository's routes/ in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_routes", here.parent / "routes"):
        if candidate.is_dir():
            return candidate
    return here.parent / "routes"


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=default_data_dir)
    routes_dir: Path = field(default_factory=default_routes_dir)
    # None: the demo catalog runs only while no real provider is configured.
    demo: bool | None = None
    admin_key: Secret | None = None
    public_base_url: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    # The most one upstream reply may hold, compressed or decoded (a few 4K images' worth).
    max_reply_bytes: int = 64 * 1024 * 1024
    # The most pixels a delivered image may have (the widest 4K image is ~17 million).
    max_image_pixels: int = 36_000_000
    image_url_ttl_s: int = 3600
    request_timeout_s: float = 300.0
    # Multiplies simulated upstream latencies: 0 makes the demo instant (tests), 1 is realistic.
    simulation_time_scale: float = 1.0
    access_log: bool = False
    workers: int = 1  # server processes (serve --workers)
    # PostgreSQL for the billing store (postgresql://…); None: SQLite in the data directory.
    # A Secret: the URL may carry a password.
    database_url: Secret | None = None
    # Fleet mode: Redis (redis://…) for the state replicas share: rate windows and host slots.
    # Needs a PostgreSQL database_url (SQLite is one machine's). A Secret, as above.
    redis_url: Secret | None = None
    # What this fleet's Redis keys begin with: fleets (or tests) sharing one Redis keep apart.
    redis_prefix: str = "switchyard"
    # The Standard Webhooks secret (`whsec_…`) job webhooks are signed with; None: made once
    # and kept in the data directory, or in the database a fleet shares (proxy/shared.py).
    webhook_secret: Secret | None = None
    # Per-key labels on money and limit metrics; off for very many tenants (label "-").
    metrics_per_key: bool = True
    # The prompt in the per-request JSON log line; off by default (prompts are tenants' data).
    log_prompts: bool = False
    # The bearer token Prometheus scrapes /metrics with (it shows every key's money); None:
    # /metrics answers loopback clients that send no credentials (proxy/api/metrics.py).
    metrics_token: Secret | None = None
    # Slow clients (proxy/connections.py): the longest a connection may wait idle for its next
    # request, take to send a request's headers, or let a body stall (either way); and the
    # largest header block taken (431 above).
    keep_alive_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    # Networks tenants' webhooks may reach although they are not public (a receiver on this
    # machine or the LAN), plain http included; empty: public https receivers only.
    callback_allow_cidrs: tuple[Network, ...] = ()
    # The most async jobs and batch items one key may have queued or running (429 past it),
    # so that no tenant fills the queue, and the database, for everyone.
    max_queued_per_key: int = 100_000
    # What routing saved is priced against one route per model: by default the first its
    # catalog file lists; here model -> provider names another (proxy/billing/savings.py).
    reference_routes: Mapping[str, str] = field(default_factory=dict)
    # The response cache (proxy/api/caching.py): the most its entries may hold together
    # (least recently used go first), whether tenants share it (off: a tenant never gets
    # another's image), and how long a seeded request's answer is kept when nothing else
    # says (0: a seed alone makes nothing cacheable).
    cache_max_bytes: int = 1024 * 1024 * 1024
    cache_shared: bool = False
    cache_seed_ttl_s: int = 3600

    @property
    def database_path(self) -> Path:
        return self.data_dir / "switchyard.db"

    @property
    def fleet(self) -> bool:
        """Many replicas acting as one: their shared state lives in Redis."""
        return self.redis_url is not None

    @property
    def database(self) -> str | Path:
        """What the billing store opens: the PostgreSQL URL, or the SQLite file."""
        return self.database_url.reveal() if self.database_url else self.database_path


_ENV: dict[str, str] = {
    "host": "SWITCHYARD_HOST",
    "port": "SWITCHYARD_PORT",
    "data_dir": "SWITCHYARD_DATA_DIR",
    "routes_dir": "SWITCHYARD_ROUTES_DIR",
    "demo": "SWITCHYARD_DEMO",
    "admin_key": "SWITCHYARD_ADMIN_KEY",
    "public_base_url": "SWITCHYARD_PUBLIC_BASE_URL",
    "max_body_bytes": "SWITCHYARD_MAX_BODY_BYTES",
    "max_reply_bytes": "SWITCHYARD_MAX_REPLY_BYTES",
    "max_image_pixels": "SWITCHYARD_MAX_IMAGE_PIXELS",
    "image_url_ttl_s": "SWITCHYARD_IMAGE_URL_TTL_S",
    "request_timeout_s": "SWITCHYARD_REQUEST_TIMEOUT_S",
    "simulation_time_scale": "SWITCHYARD_SIMULATION_TIME_SCALE",
    "access_log": "SWITCHYARD_ACCESS_LOG",
    "database_url": "SWITCHYARD_DATABASE_URL",
    "redis_url": "SWITCHYARD_REDIS_URL",
    "redis_prefix": "SWITCHYARD_REDIS_PREFIX",
    "webhook_secret": "SWITCHYARD_WEBHOOK_SECRET",
    "workers": "SWITCHYARD_WORKERS",
    "metrics_per_key": "SWITCHYARD_METRICS_PER_KEY",
    "log_prompts": "SWITCHYARD_LOG_PROMPTS",
    "metrics_token": "SWITCHYARD_METRICS_TOKEN",
    "keep_alive_timeout_s": "SWITCHYARD_KEEP_ALIVE_TIMEOUT_S",
    "header_timeout_s": "SWITCHYARD_HEADER_TIMEOUT_S",
    "body_timeout_s": "SWITCHYARD_BODY_TIMEOUT_S",
    "max_header_bytes": "SWITCHYARD_MAX_HEADER_BYTES",
    "callback_allow_cidrs": "SWITCHYARD_CALLBACK_ALLOW_CIDRS",
    "max_queued_per_key": "SWITCHYARD_MAX_QUEUED_PER_KEY",
    "reference_routes": "SWITCHYARD_REFERENCE_ROUTES",
    "cache_max_bytes": "SWITCHYARD_CACHE_MAX_BYTES",
    "cache_shared": "SWITCHYARD_CACHE_SHARED",
    "cache_seed_ttl_s": "SWITCHYARD_CACHE_SEED_TTL_S",
}

MIN_METRICS_TOKEN = 16  # characters: a scrape credential worth the name


def _coerce(name: str, raw: object) -> object:
    """Turn a TOML or environment value into the field's type, or say which setting is wrong."""
    try:
        if name in ("port", "max_body_bytes", "max_reply_bytes", "max_image_pixels",
                    "image_url_ttl_s", "workers", "max_header_bytes", "max_queued_per_key",
                    "cache_max_bytes"):
            value = int(str(raw))
            if value <= 0 or (name == "port" and value > 65535):
                raise ValueError
            return value
        if name == "cache_seed_ttl_s":  # 0 turns the seed's default off
            ttl = int(str(raw))
            if not 0 <= ttl <= 30 * 86400:
                raise ValueError
            return ttl
        if name in ("request_timeout_s", "simulation_time_scale"):
            number = float(str(raw))
            if number < 0:
                raise ValueError
            return number
        if name in ("keep_alive_timeout_s", "header_timeout_s", "body_timeout_s"):
            seconds = float(str(raw))
            if not 0 < seconds < float("inf"):  # 0 would close every connection at once
                raise ValueError
            return seconds
        if name == "demo":
            return _boolean(raw)
        if name in ("access_log", "metrics_per_key", "log_prompts", "cache_shared"):
            flag = _boolean(raw)
            if flag is None:
                raise ValueError
            return flag
        if name in ("data_dir", "routes_dir"):
            return Path(str(raw)).expanduser()
        if name == "webhook_secret":  # whsec_ and the base64 of 16 bytes or more
            key = str(raw).removeprefix("whsec_")
            if key == str(raw) or len(base64.b64decode(key, validate=True)) < 16:
                raise ValueError
            return Secret(str(raw))
        if name in ("admin_key", "database_url", "redis_url", "metrics_token"):
            return Secret(str(raw)) if str(raw) else None
        if name == "callback_allow_cidrs":  # "10.0.0.0/8, 127.0.0.0/8", or a TOML list
            return allow_list(raw)
        if name == "reference_routes":  # a TOML table, or "model=provider,model=provider"
            return _pairs(raw)
        if name == "public_base_url":
            return str(raw).rstrip("/") or None
        return str(raw)
    except ValueError:  # binascii.Error is one
        raise ConfigError(f"setting {name!r} has an invalid value") from None


def _pairs(raw: object) -> dict[str, str]:
    """model -> provider from a TOML table or from "model=provider,…" text."""
    items = list(raw.items()) if isinstance(raw, dict) else \
        [part.partition("=")[::2] for part in str(raw).split(",") if part.strip()]
    pairs = {str(k).strip(): v.strip() for k, v in items if isinstance(v, str)}
    if len(pairs) != len(items) or not all(pairs) or not all(pairs.values()):
        raise ValueError("reference_routes")
    return pairs


def _boolean(raw: object) -> bool | None:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    if text in ("", "auto"):
        return None
    raise ValueError(text)


def load(path: Path | None = None, env: Mapping[str, str] | None = None,
         **overrides: Any) -> Config:
    """Build the Config: defaults, then the TOML file, then the environment, then overrides."""
    env = os.environ if env is None else env
    path = path or (Path(env["SWITCHYARD_CONFIG"]) if env.get("SWITCHYARD_CONFIG") else None)
    values: dict[str, object] = {}
    known = {f.name for f in fields(Config)}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
        values.update({k: _coerce(k, v) for k, v in data.items()})
    for name, var in _ENV.items():
        if var in env:
            values[name] = _coerce(name, env[var])
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    return _checked(replace(Config(), **values))  # type: ignore[arg-type]


def _checked(config: Config) -> Config:
    """Settings that are fine alone but wrong together."""
    database = config.database_url.reveal() if config.database_url else ""
    if config.fleet and not database.startswith(("postgresql://", "postgres://")):
        raise ConfigError("redis_url (SWITCHYARD_REDIS_URL) turns on fleet mode, which needs a "
                          "PostgreSQL database_url (SWITCHYARD_DATABASE_URL=postgresql://…): "
                          "replicas share keys, budgets and the ledger there, and SQLite is one "
                          "machine's file")
    redis = config.redis_url.reveal() if config.redis_url else ""
    if config.fleet and not redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("setting 'redis_url' must start with redis://, rediss:// or unix://")
    if config.metrics_token and len(config.metrics_token.reveal()) < MIN_METRICS_TOKEN:
        raise ConfigError(f"setting 'metrics_token' must be at least {MIN_METRICS_TOKEN} "
                          "characters: a long random string")
    return config
