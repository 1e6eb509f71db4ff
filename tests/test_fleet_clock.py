"""Leases one replica writes and another compares are on the database server's clock
(PostgresDatabase.clock), not each replica's own: a replica whose wall clock runs ahead, or
steps ahead while it runs (NTP, a restored VM), does not take over an Idempotency-Key claim, a
job or a budget hold that is still live elsewhere. The server's clock is carried on the
replica's monotonic clock, their difference measured at its first call and every CLOCK_S.

Here the replica that runs ahead is this process with time.time moved on after the other
replica wrote its lease."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from proxy.billing.idempotency import Claim, Claimed
from proxy.billing.store import Store
from proxy.config import load
from proxy.shared import media_store

AHEAD_S = 400.0  # past a job's lease (request_timeout_s + 60) and an Idempotency-Key's (5 s)
TTL_S = 300  # an image link's lifetime, under AHEAD_S


def _step_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's wall clock steps AHEAD_S ahead of the server's."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + AHEAD_S)


def test_a_replica_whose_clock_steps_ahead_does_not_take_a_live_idempotency_claim(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(postgres_url) as first, Store(postgres_url) as later:
        key = first.create_key("k")[0].id
        assert first.idempotency.claim(Claim(key, "idem-1", "a"), "fp")[0] is Claimed.NEW
        _step_ahead(monkeypatch)
        state, _ = later.idempotency.claim(Claim(key, "idem-1", "b"), "fp")
        assert state is Claimed.BUSY, "a live claim was taken over: the request ran twice"


def test_a_replica_whose_clock_steps_ahead_neither_claims_a_live_job_nor_sweeps_a_live_hold(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(postgres_url) as first, Store(postgres_url) as later:
        key = first.create_key("k")[0].id
        first.jobs.enqueue(key, "generations", orjson.dumps({"model": "m", "prompt": "p"}))
        assert len(first.jobs.claim_many(360, 1)) == 1
        assert first.money.reserve(key, "total", 50_000, None) is not None
        _step_ahead(monkeypatch)
        assert later.jobs.claim_many(360, 1) == [], "a running job was claimed again"
        assert later.money.sweep(360) == 0, "a live request's budget hold was released"


def test_the_difference_to_the_server_s_clock_is_measured_again(postgres_url: str) -> None:
    """A difference gone wrong (a suspended machine's monotonic clock stood still) is put
    right by the next measurement, on the next call's own connection."""
    with Store(postgres_url) as store:
        store.db._base += AHEAD_S  # type: ignore[attr-defined]
        assert store.db.clock() - time.time() > AHEAD_S - 5
        store.db._clock_due = 0.0  # type: ignore[attr-defined]
        store.count_keys()
        assert abs(store.db.clock() - time.time()) < 5


def test_a_replica_whose_clock_steps_ahead_keeps_images_and_links_that_are_live(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images behind links expire on the server's clock too: before, a replica whose clock ran
    ahead swept images whose links the others still honoured (404 on the replica that minted
    the link) and refused those links itself (helper-44)."""
    config = load(env={}, data_dir=Path("/nonexistent"), image_url_ttl_s=TTL_S)
    with Store(postgres_url) as first, Store(postgres_url) as later:
        minting = media_store(config, first.db)
        name = asyncio.run(minting.put(b"\x89PNG", "image/png"))
        link = parse_qs(urlsplit(minting.link("http://a", name)).query)
        _step_ahead(monkeypatch)  # past the link's lifetime, on this replica's clock only
        sweeping = media_store(config, later.db)
        assert sweeping.verify(name, link["expires"][0], link["sig"][0])
        assert sweeping.sweep() == 0, "an image whose link is live was swept"
        assert asyncio.run(sweeping.read(name)) is not None
