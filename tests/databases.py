"""Billing databases for tests: SQLite in a temp dir, and the machine's real PostgreSQL.

Each PostgreSQL test gets a schema of its own (dropped afterwards) through the URL's
search_path. Without a reachable server the PostgreSQL cases skip with the reason, except in
CI (CI=true), where they must run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.bench import fleet_procs

POSTGRES_URL = os.environ.get("SWITCHYARD_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def _admin() -> object:
    import psycopg
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({exc.__class__.__name__}); "
                    f"set SWITCHYARD_TEST_POSTGRES_URL to run these")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema."""
    conn = _admin()
    schema = "sy_test_" + secrets.token_hex(6)
    conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


@contextlib.contextmanager
def own_database(prefix: str) -> Iterator[str]:
    """The URL of a PostgreSQL database of the caller's own, for real serve processes:
    created now, dropped afterwards (their connections ended)."""
    _admin().close()  # type: ignore[attr-defined]  # skips (or fails in CI) without a server
    with fleet_procs.own_database(POSTGRES_URL, prefix) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The billing database target for each engine: a file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "switchyard.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
