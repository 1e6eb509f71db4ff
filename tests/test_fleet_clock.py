"""Leases one replica writes and another compares are on the database server's clock
(PostgresDatabase.clock), not each replica's own: a replica whose clock runs ahead does not
take over an Idempotency-Key claim, a job or a budget hold that is still live elsewhere. Each
replica measures the difference to the server's clock at its first call and every CLOCK_S.

Here the replica that runs ahead is the same process with time.time moved on, after the
other one wrote its lease; it measures again at its next call."""

from __future__ import annotations

import time

import orjson
import pytest

from proxy.billing.idempotency import Claim, Claimed
from proxy.billing.store import Store

AHEAD_S = 400.0  # past a job's lease (request_timeout_s + 60) and an Idempotency-Key's (5 s)


def _runs_ahead(store: Store) -> None:
    """The replica measures its clock against the server's again at its next call."""
    store.db._clock_due = 0.0  # type: ignore[attr-defined]


def test_a_replica_ahead_does_not_take_a_live_idempotency_claim(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(postgres_url) as first, Store(postgres_url) as later:
        key = first.create_key("k")[0].id
        claim = Claim(key, "idem-1", "holder-a")
        assert first.idempotency.claim(claim, "fp")[0] is Claimed.NEW
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + AHEAD_S)
        _runs_ahead(later)
        state, _ = later.idempotency.claim(Claim(key, "idem-1", "holder-b"), "fp")
        assert state is Claimed.BUSY, "a live claim was taken over: the request ran twice"


def test_a_replica_ahead_neither_claims_a_live_job_nor_sweeps_a_live_hold(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(postgres_url) as first, Store(postgres_url) as later:
        key = first.create_key("k")[0].id
        first.jobs.enqueue(key, "generations", orjson.dumps({"model": "m", "prompt": "p"}))
        assert len(first.jobs.claim_many(360, 1)) == 1
        hold = first.money.reserve(key, "total", 50_000, None)
        assert hold is not None
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + AHEAD_S)
        _runs_ahead(later)
        assert later.jobs.claim_many(360, 1) == [], "a running job was claimed again"
        assert later.money.sweep(360) == 0, "a live request's budget hold was released"
        assert abs(later.db.clock() - real()) < 5
