"""Migrations, once on main, never change: a database some replica migrated already would never
get what an edit adds (helper-50: reservations.claim was added to the migration that had added
reservations.ticket, and a database migrated in between refused every budget hold). A change
to the schema is a migration appended to the list, with its digest appended here."""

from __future__ import annotations

import hashlib

import pytest

from proxy.billing import schema
from proxy.billing.schema import MIGRATIONS
from proxy.billing.store import Store

APPLIED = (
    "b7098270f771ae93",
    "9cadd5acd4c021de",
    "dfe19838bec3d07a",
    "1369bca01013d223",
    "51e2c22125fcbed4",
    "7b7d899fcc4bf3d8",
    "f64b08537fcf3af3",
    "7c52dc545dc315f3",
    "ed17434b21749e29",
    "8f84f70f024613cb",
    "c39a37d506764db9",
    "539a797b21ba41ab",
    "25f9f2a8beb50e65",
    "62ff909d0dac76a3",
    "02fe7299d3561dfd",
    "c8e61f6d3a21b5f1",
    "d662026877e1c28e",
)


def test_no_migration_on_main_changed() -> None:
    digests = tuple(hashlib.sha256(m.encode()).hexdigest()[:16] for m in MIGRATIONS)
    assert digests[:len(APPLIED)] == APPLIED
    assert len(digests) == len(APPLIED), "a new migration: append its digest to APPLIED"


def test_a_database_migrated_with_claim_in_the_ticket_s_migration_starts(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From c2ed05d to cca3092 main added reservations.claim in the migration that adds
    reservations.ticket; such a database, at that version with the column, passes over the
    migration that adds it now (helper-51: a duplicate column, and the server did not start)."""
    combined = schema.MIGRATIONS[-2] + schema.MIGRATIONS[-1]
    with monkeypatch.context() as then:
        then.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS[:-2], combined))
        Store(database).close()
    with Store(database) as store:
        job = store.jobs.enqueue("key_1", "generations", b"{}")
        assert store.money.reserve("key_1", "total", 1, None, None, job.id, "claim-1")
