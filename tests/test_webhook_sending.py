"""The webhook sender (proxy.api.job_webhooks) with a resolver of the test's own: a name is
resolved once per attempt, every address checked, and the POST pinned to the checked
address with the name as Host and TLS server name; a name resolving inside is refused at
connect time; whatever one attempt raises is its failure alone; a claim gives each key a
bounded share."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
import trustme

from proxy.api.job_webhooks import WEBHOOK_BACKOFF_S, Signer, Webhooks
from proxy.billing.store import Store
from proxy.egress import IPAddress, Policy, allow_list
from tests.receivers import Receiver

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
BODY = orjson.dumps({"model": "test-image", "prompt": "x"})
LOOPBACK = Policy(allow_list("127.0.0.0/8"))


class Names:
    """A resolver from a table; a name listed with an exception raises it."""

    def __init__(self, table: dict[str, list[str] | Exception]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append(host)
        found = self.table[host]
        if isinstance(found, Exception):
            raise found
        return [ipaddress.ip_address(a) for a in found]


def _finished(store: Store, key_name: str, urls: list[str]) -> list[str]:
    key = store.create_key(key_name)[0].id
    ids = [store.jobs.enqueue(key, "generations", BODY, callback_url=url).id for url in urls]
    while claimed := store.jobs.claim_many(60, 50):
        for job in claimed:
            store.jobs.finish(job.id, 200, b"{}")
    return ids


def _state(store: Store, job_id: str) -> tuple[str, int]:
    (row,) = store.db.query("SELECT webhook_state, webhook_attempts FROM jobs WHERE id = ?",
                            (job_id,))
    return str(row[0]), int(row[1])


def _send_due(store: Store, policy: Policy, names: Names) -> None:
    async def once() -> None:
        sender = Webhooks(store.jobs, Signer(SECRET), policy, names)
        await sender.deliver_due()
        await sender.settle()
        await sender.aclose()
    asyncio.run(once())


class TlsReceiver:
    """An https receiver on 127.0.0.1 with a certificate for `name` only; records the TLS
    server name asked for and each POST's Host header."""

    def __init__(self, ca: trustme.CA, name: str) -> None:
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(name).configure_cert(context)
        context.sni_callback = lambda _sock, sni, _ctx: self.server_names.append(sni)
        hosts = self.hosts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                hosts.append(self.headers["host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trusted_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A CA the sender's client trusts (httpx reads SSL_CERT_FILE when it is made)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    return ca


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.stop()


def test_a_name_is_resolved_once_and_the_post_pinned_to_the_checked_address(
        tmp_path: Path, trusted_ca: trustme.CA) -> None:
    tls = TlsReceiver(trusted_ca, "hooks.example")
    names = Names({"hooks.example": ["127.0.0.1"]})  # no DNS knows it: only the pin gets there
    try:
        with Store(tmp_path / "s.db") as store:
            (job_id,) = _finished(store, "k", [f"https://hooks.example:{tls.port}/hooks"])
            _send_due(store, LOOPBACK, names)
            assert _state(store, job_id) == ("delivered", 1)
    finally:
        tls.stop()
    assert names.asked == ["hooks.example"]
    assert tls.server_names == ["hooks.example"]  # the certificate checked is the name's
    assert tls.hosts == [f"hooks.example:{tls.port}"]


def test_a_name_resolving_inside_is_refused_at_connect_and_given_up(
        tmp_path: Path, receiver: Receiver) -> None:
    port = receiver.server.server_address[1]
    names = Names({"inside.example": ["127.0.0.1"],
                   "mixed.example": ["8.8.8.8", "127.0.0.1"]})  # one bad address is enough
    with Store(tmp_path / "s.db") as store:
        ids = _finished(store, "k", [f"https://inside.example:{port}/hooks",
                                     f"https://mixed.example:{port}/hooks",
                                     f"http://inside.example:{port}/hooks"])
        _send_due(store, Policy(), names)
        assert [_state(store, job_id) for job_id in ids] == [("gave_up", 1)] * 3
    assert receiver.seen == []
    assert sorted(names.asked) == ["inside.example", "inside.example", "mixed.example"]


def test_whatever_a_send_raises_is_that_webhooks_failure_alone(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    port = receiver.server.server_address[1]
    names = Names({"broken.example": RuntimeError("a bug, secret-looking text"),
                   "gone.example": OSError("no such name"),
                   "good.example": ["127.0.0.1"]})
    with Store(tmp_path / "s.db") as store:
        broken, gone, poison, good = _finished(store, "k", [
            f"http://broken.example:{port}/hooks", f"http://gone.example:{port}/hooks",
            "https://localhost/\x7fhook?token=s3cr3t", f"http://good.example:{port}/hooks"])
        _send_due(store, LOOPBACK, names)
        assert _state(store, good) == ("delivered", 1)
        assert _state(store, broken) == _state(store, gone) == ("due", 1)  # after a backoff
        assert _state(store, poison) == ("gave_up", 1)
        (after,) = store.db.query("SELECT webhook_after - finished_at FROM jobs WHERE id = ?",
                                  (broken,))[0]
    assert after >= WEBHOOK_BACKOFF_S[0] - 1
    assert receiver.ids() == [good]
    assert "RuntimeError" in caplog.text and "secret-looking" not in caplog.text
    assert "s3cr3t" not in caplog.text


def test_a_claim_gives_each_key_a_bounded_share(database: str) -> None:
    """The bound counts a key's attempts in flight in the database, whoever claimed them (a
    fleet's other processes too), until each is done or its lease runs out."""
    with Store(database) as store:
        crowd = _finished(store, "crowd", ["https://hooks.example/a"] * 30)
        (lone,) = _finished(store, "lone", ["https://hooks.example/b"])
        now = int(time.time())
        until = now + 60
        first = store.jobs.claim_webhooks(until, 20, 4, now=now)
        assert lone in {job.id for job in first}
        sending = [job for job in first if job.id in crowd]
        assert len(sending) == 4  # of its 30
        assert store.jobs.claim_webhooks(until, 20, 4, now=now) == []  # 4 in flight
        assert store.jobs.webhook_done(sending[0].id, until, True, None)
        (freed,) = store.jobs.claim_webhooks(until, 20, 4, now=now)  # one turn came back
        assert freed.id in crowd
        # Their sender died: once its leases run out, its turns are free and its four due
        later = store.jobs.claim_webhooks(until + 120, 20, 4, now=until + 1)
        assert len([job for job in later if job.id in crowd]) == 4
        assert len(store.jobs.claim_webhooks(until + 120, 20, now=until + 1)) == 20  # unbound
