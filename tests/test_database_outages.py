"""Database outages under a real `switchyard serve`: PostgreSQL backends terminated mid-load,
PostgreSQL restarted, SQLite locked while async jobs wait. Each time service resumes without a
restart of Switchyard, requests meanwhile get a fast 503 (never a 500 or a hang), and the
ledger matches what the clients saw: every 200 billed exactly once, nothing else billed, no
budget hold left behind.

PostgreSQL tests use a database of their own (dropped afterwards); the restart test stops the
machine's cluster for a few seconds and always starts it again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from tests.databases import POSTGRES_URL, _admin
from tests.serving import Served

CLIENTS = 16
ASYNC = {"Prefer": "respond-async"}


@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str
    billed_micros: int  # what the response said it billed (0 for an error)
    code: str | None  # the error's code
    seconds: float


@pytest.fixture
def own_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, so terminating its backends touches nobody
    else's; dropped afterwards."""
    admin = _admin()
    assert isinstance(admin, psycopg.Connection)
    name = "switchyard_dbblip_" + secrets.token_hex(4)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(POSTGRES_URL)._replace(path="/" + name).geturl()
    finally:
        _running_again()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as again:
            again.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def post(client: httpx.Client, key: str, prompt: str) -> Answer:
    started = time.monotonic()
    response = client.post("/v1/images/generations", headers={"authorization": f"Bearer {key}"},
                           json={"model": "test-image", "prompt": prompt})
    return _answer(response, time.monotonic() - started)


def _answer(response: httpx.Response, seconds: float) -> Answer:
    ok = response.status_code == 200
    billed = round(float(response.headers["x-switchyard-billed-usd"]) * 1e6) if ok else 0
    code = None if ok else response.json()["error"]["code"]
    return Answer(response.status_code, response.headers["x-request-id"], billed, code, seconds)


async def load(base: str, keys: list[str], seconds: float,
               events: list[tuple[float, Callable[[], None]]]) -> list[Answer]:
    """CLIENTS clients posting for `seconds`; each event runs (in a thread) at its offset."""
    answers: list[Answer] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async def one(i: int) -> None:
            key = keys[i % len(keys)]
            while not stop.is_set():
                started = time.monotonic()
                response = await client.post(
                    "/v1/images/generations", headers={"authorization": f"Bearer {key}"},
                    json={"model": "test-image", "prompt": f"c{i}"})
                answers.append(_answer(response, time.monotonic() - started))

        async def happen() -> None:
            began = time.monotonic()
            for at, event in events:
                await asyncio.sleep(max(0.0, began + at - time.monotonic()))
                await asyncio.to_thread(event)
            await asyncio.sleep(max(0.0, began + seconds - time.monotonic()))
            stop.set()

        await asyncio.gather(happen(), *(one(i) for i in range(CLIENTS)))
    return answers


def audit(target: str | Path, answers: list[Answer]) -> None:
    """The ledger against the clients: every 200 billed once, as its response said; nothing
    else billed; no hold left (the holds of refused settles go when the database is back)."""
    deadline = time.monotonic() + 10
    with Store(target) as store:
        while store.db.query("SELECT COUNT(*) FROM reservations")[0][0] and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        rows = store.db.query("SELECT request_id, outcome, billed_micros FROM ledger")
        held = store.db.query("SELECT COUNT(*) FROM reservations")[0][0]
        counters = store.db.query("SELECT SUM(spent_micros), SUM(reserved_micros) "
                                  "FROM budget_counters")[0]
    billed = {r[0]: r[2] for r in rows if r[2]}
    assert {r[0] for r in rows if r[1] == "success"} == set(billed)
    ok = {a.request_id: a.billed_micros for a in answers if a.status == 200}
    assert billed == ok, "the ledger bills exactly the 200s the clients saw"
    assert held == 0 and (counters[1] or 0) == 0, "a budget hold was left behind"
    assert (counters[0] or 0) == sum(ok.values())


def refused_fast(answers: list[Answer], within_s: float) -> None:
    errors = [a for a in answers if a.status != 200]
    assert all(a.status == 503 and a.code == "database_unavailable" for a in errors), \
        {(a.status, a.code) for a in errors}
    assert all(a.seconds < within_s for a in errors), max(a.seconds for a in errors)


def ready_again(served: Served, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while httpx.get(served.base + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "/readyz did not recover by itself"
        time.sleep(0.1)


def serve_on(url: str, data_dir: Path) -> Served:
    return Served(data_dir, env={"SWITCHYARD_DATABASE_URL": url,
                                 "SWITCHYARD_SIMULATION_TIME_SCALE": "0.02"})


def keys_on(target: str | Path) -> list[str]:
    with Store(target) as store:
        return [store.create_key("plain")[1],
                store.create_key("budget", limits=KeyLimits(budget_usd=Decimal(1000)))[1]]


def test_backends_terminated_mid_load_cost_no_restart_and_bill_once(
        own_database: str, tmp_path: Path) -> None:
    keys = keys_on(own_database)
    name = urlsplit(own_database).path.lstrip("/")

    def terminate() -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "datname = %s AND pid <> pg_backend_pid()", (name,))

    with serve_on(own_database, tmp_path / "data") as served:
        answers = asyncio.run(load(served.base, keys, 3.0, [(1.0, terminate),
                                                            (2.0, terminate)]))
        ready_again(served)
        with httpx.Client(base_url=served.base, timeout=10) as client:
            after = [post(client, keys[i % 2], "after") for i in range(6)]
        log = served.log()
    assert all(a.status == 200 for a in after), after
    assert "PostgreSQL is unavailable (" in log and "PostgreSQL is available again" in log
    print(f"\nterminated twice under load: {len(answers)} requests, "
          f"{sum(a.status == 200 for a in answers)} 200s, "
          f"{sum(a.status == 503 for a in answers)} 503s")
    assert sum(a.status == 200 for a in answers) >= 20, "the load did not get going"
    refused_fast(answers, within_s=3)
    audit(own_database, answers + after)


def _cluster() -> list[str]:
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"] if versions \
        else []


def _running_again() -> None:
    """Start the machine's cluster if a test left it stopped."""
    if _cluster() and subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode:
        subprocess.run([*_cluster(), "start"], check=False, timeout=60)


@pytest.fixture
def cluster() -> Iterator[list[str]]:
    """pg_ctlcluster for the machine's PostgreSQL; it runs again after the test, always."""
    if not _cluster() or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0 or \
            urlsplit(POSTGRES_URL).hostname not in ("127.0.0.1", "localhost"):
        if os.environ.get("CI") == "true":
            raise RuntimeError("the PostgreSQL restart test needs pg_ctlcluster, as root, "
                               "for a local server")
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster, as root, for a local server")
    try:
        yield _cluster()
    finally:
        _running_again()


def test_a_postgres_restart_is_fast_503s_then_service_resumes_by_itself(
        own_database: str, cluster: list[str], tmp_path: Path) -> None:
    keys = keys_on(own_database)
    with serve_on(own_database, tmp_path / "data") as served, \
            httpx.Client(base_url=served.base, timeout=30) as client:
        answers = [post(client, keys[i % 2], "before") for i in range(4)]
        assert all(a.status == 200 for a in answers)
        subprocess.run([*cluster, "stop", "-m", "fast"], check=True, timeout=60)
        try:
            during = [post(client, keys[i % 2], "during") for i in range(4)]
            started = time.monotonic()
            ready = client.get("/readyz")
            ready_s = time.monotonic() - started
        finally:
            starting = subprocess.Popen([*cluster, "start"])
        back = Accepting(own_database)
        while (answer := post(client, keys[0], "after")).status != 200:
            answers.append(answer)
            assert time.monotonic() - back.started < 30, "service did not resume by itself"
            time.sleep(0.02)
        served_at = time.monotonic()
        assert starting.wait(60) == 0
        answers += [answer, *(post(client, keys[i % 2], "after") for i in range(4))]
        ready_again(served)
        log = served.log()
    # Said once (helper-48: each refused request also logged an ERROR line of its own).
    assert "unhandled" not in log, log
    assert log.count("switchyard.database: PostgreSQL is unavailable") == 1, log
    assert back.at is not None
    recovery_s = served_at - back.at
    print(f"\nPostgreSQL restart: 503s within {max(a.seconds for a in during):.2f} s while it "
          f"was down (/readyz 503 in {ready_s:.2f} s); first 200 {recovery_s:.2f} s after "
          f"PostgreSQL accepted connections again")
    assert all(a.status == 503 for a in during) and ready.status_code == 503 and ready_s < 3
    assert all(a.status == 200 for a in answers[-4:])
    refused_fast(during + answers, within_s=2)
    assert recovery_s < 5
    audit(own_database, during + answers)


class Accepting:
    """The moment PostgreSQL accepts connections again, watched from a thread (every 20 ms)."""

    def __init__(self, url: str) -> None:
        self.started = time.monotonic()
        self.at: float | None = None
        threading.Thread(target=self._watch, args=(url,), daemon=True).start()

    def _watch(self, url: str) -> None:
        while time.monotonic() - self.started < 60:
            try:
                psycopg.connect(url, connect_timeout=1).close()
            except psycopg.OperationalError:
                time.sleep(0.02)
                continue
            self.at = time.monotonic()
            return


def test_sqlite_locked_while_async_jobs_wait_then_they_all_complete(tmp_path: Path) -> None:
    """Locked for 12 s, past the 10 s busy timeout, while jobs are at their upstream and more
    are being queued: a job worker's loop that meets it fails, logs and counts it, and goes on;
    every job accepted completes after the lock, billed once; a request refused meanwhile is a
    503."""
    data_dir = tmp_path / "data"
    path = data_dir / "switchyard.db"
    keys = keys_on(path)
    auth = {"authorization": f"Bearer {keys[1]}"}
    env = {"SWITCHYARD_SIMULATION_TIME_SCALE": "1"}  # a second at the upstream
    with Served(data_dir, env=env) as served, httpx.Client(base_url=served.base,
                                                           timeout=60) as client:
        submit = lambda: client.post(  # noqa: E731
            "/v1/images/generations", headers={**auth, **ASYNC},
            json={"model": "test-image", "prompt": "queued"})
        accepted = [submit() for _ in range(3)]
        for job in accepted:
            assert wait(client, auth, job.json()["id"], until=("processing",)) == "processing"
        lock = sqlite3.connect(path, isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")
        late: list[httpx.Response] = []
        try:
            queuing = [threading.Thread(target=lambda: late.append(submit()))
                       for _ in range(2)]
            for thread in queuing:
                thread.start()
            time.sleep(12)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for thread in queuing:
            thread.join(30)
        assert all(r.status_code == 202 for r in accepted)
        assert len(late) == 2 and all(r.status_code in (202, 503) for r in late)
        assert all(r.json()["error"]["code"] == "database_unavailable"
                   for r in late if r.status_code == 503)
        jobs = [r.json()["id"] for r in accepted + late if r.status_code == 202]
        finished = {job: wait(client, auth, job) for job in jobs}
        metrics = client.get("/metrics").text
        log = served.log()
    assert set(finished.values()) == {"succeeded"}, finished
    counted = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("switchyard_background_errors_total{")}
    failed = [loop for loop, count in counted.items() if count]
    print(f"\nSQLite locked 12 s: background errors {counted}; late requests "
          f"{[r.status_code for r in late]}")
    # Which loops meet the lock, if any, is a matter of timing: writes queued behind the
    # ledger's one SQLite thread may wait it out within their busy timeout. Those that do fail
    # log it and go on (each loop's failing and going on is tested in test_supervise.py).
    for loop in failed:
        assert f"background loop {loop} failed (DatabaseUnavailable), and goes on\n" \
               f"Traceback (most recent call last)" in log
    assert keys[1] not in log and (not failed or "proxy/billing/db.py" in log)
    with Store(path) as store:
        rows = store.db.query("SELECT request_id, billed_micros FROM ledger "
                              "WHERE outcome = 'success'")
        (spent,) = store.db.query("SELECT SUM(spent_micros), SUM(reserved_micros) "
                                  "FROM budget_counters")
    assert sorted(r[0] for r in rows) == sorted(jobs)
    assert spent == (sum(r[1] for r in rows), 0)


def wait(client: httpx.Client, auth: dict[str, str], job: str, within_s: float = 30,
         until: tuple[str, ...] = ("succeeded", "failed")) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = str(client.get(f"/v1/images/jobs/{job}", headers=auth).json()["status"])
        if status in until:
            return status
        time.sleep(0.05)
    return "stuck"
