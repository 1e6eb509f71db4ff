"""The billing database's schema as numbered migrations, portable across SQLite and PostgreSQL.

Money is stored as integer micro-dollars: exact, and the same on both engines. `{blob}` in a
migration is the engine's binary type. A data directory from an older version upgrades in
place; a migration runs once, under a lock that other processes respect.
"""

from __future__ import annotations

import re

from proxy.billing.db import Cursor, Database

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    """,
    """
    ALTER TABLE api_keys ADD COLUMN allowed_models TEXT;
    ALTER TABLE api_keys ADD COLUMN strategy TEXT;
    ALTER TABLE api_keys ADD COLUMN plan TEXT;
    ALTER TABLE api_keys ADD COLUMN budget_micros BIGINT;
    ALTER TABLE api_keys ADD COLUMN budget_period TEXT;
    ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
    ALTER TABLE api_keys ADD COLUMN ipm INTEGER;
    ALTER TABLE api_keys ADD COLUMN concurrency INTEGER;
    CREATE TABLE budget_counters (
        key_id TEXT NOT NULL,
        period TEXT NOT NULL,
        spent_micros BIGINT NOT NULL DEFAULT 0,
        reserved_micros BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, period)
    );
    CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        period TEXT NOT NULL,
        amount_micros BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE ledger (
        request_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT,
        route TEXT,
        tier TEXT NOT NULL,
        n_asked INTEGER NOT NULL,
        n_delivered INTEGER NOT NULL,
        billed_micros BIGINT NOT NULL,
        upstream_micros BIGINT NOT NULL,
        latency_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        failure TEXT,
        attempts INTEGER NOT NULL,
        upstream_id TEXT,
        idempotency_key TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX ledger_key_time ON ledger (key_id, created_at);
    CREATE INDEX ledger_time ON ledger (created_at);
    CREATE TABLE idempotency (
        key_id TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        status INTEGER,
        headers TEXT,
        body {blob},
        created_at BIGINT NOT NULL,
        PRIMARY KEY (key_id, idem_key)
    );
    """,
    """
    ALTER TABLE ledger ADD COLUMN delivered_at BIGINT;
    """,
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        request {blob} NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        run_after BIGINT NOT NULL,
        lease_until BIGINT,
        status INTEGER,
        response {blob},
        callback_url TEXT,
        webhook_state TEXT,
        webhook_attempts INTEGER NOT NULL DEFAULT 0,
        webhook_after BIGINT,
        created_at BIGINT NOT NULL,
        finished_at BIGINT
    );
    CREATE INDEX jobs_runnable ON jobs (state, run_after);
    CREATE INDEX jobs_webhooks ON jobs (webhook_state, webhook_after);
    """,
    """
    ALTER TABLE jobs ADD COLUMN batch_id TEXT;
    ALTER TABLE jobs ADD COLUMN custom_id TEXT;
    CREATE INDEX jobs_batch ON jobs (batch_id, state);
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        purpose TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        content {blob},
        batch_id TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT,
        errors {blob},
        total INTEGER NOT NULL DEFAULT 0,
        output_file_id TEXT,
        error_file_id TEXT,
        created_at BIGINT NOT NULL,
        in_progress_at BIGINT,
        finalizing_at BIGINT,
        completed_at BIGINT,
        cancelling_at BIGINT,
        cancelled_at BIGINT,
        expires_at BIGINT NOT NULL
    );
    """,
    """
    ALTER TABLE reservations ADD COLUMN expires_at BIGINT;
    ALTER TABLE jobs ADD COLUMN upstream_ref TEXT;
    CREATE INDEX jobs_due ON jobs (state, run_after, key_id);
    """,
    """
    CREATE TABLE upstream_calls (
        id TEXT PRIMARY KEY,
        ticket TEXT NOT NULL,
        route TEXT NOT NULL,
        part INTEGER NOT NULL,
        ordinal INTEGER NOT NULL,
        provider TEXT NOT NULL,
        key_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        model TEXT NOT NULL,
        tier TEXT NOT NULL,
        n INTEGER NOT NULL,
        upstream_micros BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        status INTEGER,
        headers TEXT,
        body {blob}
    );
    CREATE INDEX upstream_calls_ticket ON upstream_calls (ticket);
    """,
    """
    CREATE TABLE shared_secrets (
        name TEXT PRIMARY KEY,
        value {blob} NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        mime TEXT NOT NULL,
        data {blob} NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX images_expiry ON images (expires_at);
    """,
    """
    ALTER TABLE idempotency ADD COLUMN lease_until BIGINT;
    ALTER TABLE idempotency ADD COLUMN holder TEXT;
    ALTER TABLE idempotency ADD COLUMN ref TEXT;
    """,
    """
    ALTER TABLE api_keys ADD COLUMN webhook_secret TEXT;
    ALTER TABLE api_keys ADD COLUMN webhook_secret_old TEXT;
    ALTER TABLE api_keys ADD COLUMN webhook_old_until BIGINT;
    """,
    """
    CREATE INDEX jobs_turns ON jobs (state, key_id, run_after);
    """,
    """
    ALTER TABLE api_keys ADD COLUMN cache_ttl_s INTEGER;
    CREATE TABLE cache_entries (
        key TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        model TEXT NOT NULL,
        body {blob} NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT NOT NULL
    );
    CREATE INDEX cache_entries_used ON cache_entries (used_at);
    CREATE INDEX cache_entries_expiry ON cache_entries (expires_at);
    """,
    # The W3C traceparent of the request that queued a job (tracing on): its runs continue
    # that trace.
    """
    ALTER TABLE jobs ADD COLUMN traceparent TEXT;
    """,
    """
    ALTER TABLE api_keys ADD COLUMN lane TEXT;
    """,
    # Each claim of a job its own token: a run's later writes hold only while the job is
    # still that claim's (proxy/billing/jobs.py).
    """
    ALTER TABLE jobs ADD COLUMN claim_token TEXT;
    """,
    # The queued request (job) a budget hold is for: a run of it releases the holds its earlier
    # runs left (proxy/billing/money.py) ...
    """
    ALTER TABLE reservations ADD COLUMN ticket TEXT;
    CREATE INDEX reservations_ticket ON reservations (ticket) WHERE ticket IS NOT NULL;
    """,
    # ... those of runs that no longer hold the job: the claim of the run that made each.
    """
    ALTER TABLE reservations ADD COLUMN claim TEXT;
    """,
)

_BLOB = {"sqlite": "BLOB", "postgres": "BYTEA"}
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


def migrate(db: Database) -> None:
    """Apply every migration the database has not seen, in one locked transaction each."""
    with db.transaction() as cur:
        if db.engine == "postgres":
            cur.query("SELECT pg_advisory_xact_lock(727361)")
        # Under the lock: replicas starting together on a fresh PostgreSQL database would
        # each create it, and all but one fail (a duplicate in pg_type).
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = _version(db, cur)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in script.format(blob=_BLOB[db.engine]).split(";"):
                if statement.strip() and not _added_already(db, cur, statement):
                    cur.execute(statement)
            cur.execute("DELETE FROM schema_version")
            cur.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))


def _added_already(db: Database, cur: Cursor, statement: str) -> bool:
    """Whether `statement` adds a column the table has: reservations.claim came with the
    ticket's migration on main for a while (c2ed05d), then in one of its own, which such a
    database must pass over (SQLite has no ADD COLUMN IF NOT EXISTS)."""
    added = _ADD_COLUMN.match(statement.strip())
    if added is None:
        return False
    table, column = added.groups()
    if db.engine == "sqlite":
        return any(row[1] == column for row in cur.query(f"PRAGMA table_info({table})"))
    return bool(cur.query("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                          "current_schema() AND table_name = ? AND column_name = ?",
                          (table, column)))


def _version(db: Database, cur: Cursor) -> int:
    rows = cur.query("SELECT version FROM schema_version")
    if rows:
        return int(rows[0][0])
    if db.engine == "sqlite":  # data directories from before schema_version used user_version
        return int(cur.query("PRAGMA user_version")[0][0])
    return 0
