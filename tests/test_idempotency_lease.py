"""An Idempotency-Key's claim is a lease its holder renews while it lives (issue 18.4): a
holder killed mid-request leaves the key to its retry within seconds, not 15 minutes, on
SQLite (the next server on the data directory) and on PostgreSQL (another replica of the
fleet). A holder whose lease was taken over can neither keep nor give up the new claim.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from proxy.billing.idempotency import LEASE_S, Claim, Claimed, Stored
from proxy.billing.store import Store
from tests.databases import own_database
from tests.fakes.slow_hosts import KEY_ENV, SYNC_PRICE, SlowHosts, catalog_files, running
from tests.serving import Served

FIRST, SECOND, THIRD = (Claim("key_a", "k1", holder) for holder in ("h1", "h2", "h3"))
ANSWER = Stored(200, {}, b'{"data": []}')


def test_a_claim_whose_holder_stopped_renewing_is_taken_over_after_its_lease(
        database: str) -> None:
    now = time.time()
    with Store(database) as store:
        idem = store.idempotency
        assert idem.claim(FIRST, "fp", now=now)[0] is Claimed.NEW
        assert idem.claim(SECOND, "fp", now=now + LEASE_S - 1)[0] is Claimed.BUSY
        assert idem.claim(SECOND, "fp", now=now + LEASE_S + 1)[0] is Claimed.NEW
        # The first holder, back too late: its answer is not kept, its abandon frees nothing.
        idem.complete(FIRST, Stored(200, {}, b"late"))
        idem.abandon(FIRST)
        assert idem.claim(THIRD, "fp", now=now + LEASE_S + 2)[0] is Claimed.BUSY
        assert not idem.renew(FIRST, now=now + LEASE_S + 2)
        idem.complete(SECOND, ANSWER)
        assert idem.claim(THIRD, "fp") == (Claimed.DONE, ANSWER)


def test_a_renewed_claim_is_not_taken_over(database: str) -> None:
    now = time.time()
    with Store(database) as store:
        idem = store.idempotency
        idem.claim(FIRST, "fp", now=now)
        for beat in range(1, 4):
            assert idem.renew(FIRST, now=now + beat * (LEASE_S - 1))
        renewed = now + 3 * (LEASE_S - 1)
        assert idem.claim(SECOND, "fp", now=renewed + LEASE_S - 1)[0] is Claimed.BUSY
        assert idem.claim(SECOND, "fp", now=renewed + LEASE_S + 1)[0] is Claimed.NEW


def test_a_claim_from_before_leases_keeps_its_fifteen_minutes(database: str) -> None:
    """A claim an older version took (no lease) during a rolling upgrade is not taken over
    while its holder may still be generating."""
    now = time.time()
    with Store(database) as store:
        store.db.execute("INSERT INTO idempotency (key_id, idem_key, fingerprint, state, "
                         "created_at) VALUES ('key_a', 'k1', 'fp', 'pending', ?)", (int(now),))
        assert store.idempotency.claim(SECOND, "fp", now=now + 600)[0] is Claimed.BUSY
        assert store.idempotency.claim(SECOND, "fp", now=now + 901)[0] is Claimed.NEW


# Through real servers: the first request is cut off by kill -9 while its upstream call runs.

SYNC_S = 2.0
# A server that lost its lease mechanism would keep the key busy until this request timeout
# and answer 409: well past TAKEN_OVER_S.
REQUEST_TIMEOUT_S = "25"
TAKEN_OVER_S = LEASE_S + 1 + SYNC_S + 3  # lease, rounding, the retry's own call, slack


@pytest.fixture
def hosts() -> Iterator[SlowHosts]:
    with running(SlowHosts(sync_s=SYNC_S)) as started:
        yield started


def _routes(tmp_path: Path, hosts: SlowHosts) -> Path:
    routes = tmp_path / "routes"
    for name, text in catalog_files(hosts).items():
        (routes / name).parent.mkdir(parents=True, exist_ok=True)
        (routes / name).write_text(text)
    return routes


@contextlib.contextmanager
def _servers(tmp_path: Path, hosts: SlowHosts, engine: str) -> Iterator[tuple[str, Served]]:
    """(database, a server to kill); a second server comes from `_other`."""
    env = {"SWITCHYARD_ROUTES_DIR": str(_routes(tmp_path, hosts)), KEY_ENV: "k",
           "SWITCHYARD_REQUEST_TIMEOUT_S": REQUEST_TIMEOUT_S}
    with contextlib.ExitStack() as stack:
        if engine == "postgres":
            env["SWITCHYARD_DATABASE_URL"] = stack.enter_context(own_database("sy_lease"))
            database = env["SWITCHYARD_DATABASE_URL"]
        else:
            database = str(tmp_path / "one" / "switchyard.db")
        yield database, stack.enter_context(Served(tmp_path / "one", env=env))


def _other(tmp_path: Path, first: Served, engine: str) -> Served:
    """The server that gets the retry: the next one on the same data directory (SQLite), or
    another replica of the fleet (PostgreSQL)."""
    return Served(first.data_dir if engine == "sqlite" else tmp_path / "two", env=first.env)


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_holder_killed_mid_request_leaves_the_key_to_a_retry_within_seconds(
        tmp_path: Path, hosts: SlowHosts, engine: str) -> None:
    headers = {"Idempotency-Key": "order-1"}
    body = {"model": "slow-sync", "prompt": "p", "size": "1024x1024"}
    with _servers(tmp_path, hosts, engine) as (database, first):
        with Store(database) as store:
            key = store.create_key("lease")[1]
        cut_off = threading.Thread(target=_post_ignoring_errors, daemon=True, args=(
            f"{first.base}/v1/images/generations", key, headers, body))
        cut_off.start()
        _until(lambda: hosts.sync_calls == 1)
        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        with _other(tmp_path, first, engine) as second, openai.OpenAI(
                base_url=f"{second.base}/v1", api_key=key, max_retries=0,
                timeout=60) as sdk:
            retry = sdk.images.with_raw_response.generate(
                model="slow-sync", prompt="p", size="1024x1024", extra_headers=headers)
            taken_over = time.monotonic() - killed
            again = sdk.images.with_raw_response.generate(
                model="slow-sync", prompt="p", size="1024x1024", extra_headers=headers)
        with Store(database) as store:
            billed = store.db.query("SELECT billed_micros FROM ledger "
                                    "WHERE outcome = 'success'")
    assert retry.http_response.status_code == 200
    assert taken_over < TAKEN_OVER_S, f"the key stayed locked {taken_over:.1f} s"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.http_response.content == retry.http_response.content
    assert hosts.sync_calls == 2  # the killed request's call never answered, and the retry's
    assert [row[0] for row in billed] == [int(float(SYNC_PRICE) * 1_000_000)]


def _post_ignoring_errors(url: str, key: str, headers: dict[str, str],
                          body: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, headers={"authorization": f"Bearer {key}", **headers}, json=body,
                   timeout=30)


def _until(condition: Callable[[], bool], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
