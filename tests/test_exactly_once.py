"""Background work done once fleet-wide, on both engines: a webhook attempt is claimed with a
lease by one replica only (the sender that dies leaves its lease to run out; a sender whose
lease was lost cannot overwrite the next one's outcome), two replicas delivering at once POST
each job once, and a finished batch is finalized once, with one output file."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import orjson
import pytest

from proxy import supervise
from proxy.api.batches import finalize
from proxy.api.job_webhooks import WEBHOOK_LEASE_S, Signer, Webhooks
from proxy.billing.db import Database, DatabaseUnavailable
from proxy.billing.jobs import Jobs
from proxy.billing.store import Store
from proxy.egress import Policy, allow_list
from tests.receivers import Receiver

BODY = orjson.dumps({"model": "test-image", "prompt": "x"})
HOOK = "http://127.0.0.1:9/hooks"
SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
LOOPBACK = Policy(allow_list("127.0.0.0/8"))  # the receiver's network, opened on purpose


def _finished(store: Store, count: int, url: str = HOOK) -> list[str]:
    """`count` jobs that finished with a callback_url: their webhooks are due now."""
    key = store.create_key("k")[0].id
    ids = [store.jobs.enqueue(key, "generations", BODY, callback_url=url).id
           for _ in range(count)]
    while claimed := store.jobs.claim_many(60, 50):
        for job in claimed:
            store.jobs.finish(job.id, 200, b"{}")
    return ids


def _together(workers: list[Callable[[], None]]) -> None:
    """Run the callables on threads released at once."""
    start = threading.Barrier(len(workers))

    def run(work: Callable[[], None]) -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=run, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _state(store: Store, job_id: str) -> tuple[str, int, int]:
    (row,) = store.db.query("SELECT webhook_state, webhook_attempts, webhook_after FROM jobs "
                            "WHERE id = ?", (job_id,))
    return str(row[0]), int(row[1]), int(row[2])


def test_replicas_claiming_at_once_never_get_the_same_webhook(database: str) -> None:
    with Store(database) as one, Store(database) as other:
        ids = _finished(one, 40)
        won: list[str] = []
        lock = threading.Lock()

        def claimer(store: Store) -> Callable[[], None]:
            def claim() -> None:
                while claimed := store.jobs.claim_webhooks(int(time.time()) + 60, limit=7):
                    with lock:
                        won.extend(job.id for job in claimed)
            return claim

        _together([claimer(store) for store in (one, other) for _ in range(3)])
        assert len(won) == len(set(won)) == 40 and set(won) == set(ids)
        assert one.jobs.claim_webhooks(int(time.time()) + 60) == []


def test_a_claimed_webhook_is_claimed_again_only_when_its_lease_runs_out(database: str) -> None:
    with Store(database) as store:
        (job_id,) = _finished(store, 1)
        now = time.time()
        until = int(now) + 60
        (claimed,) = store.jobs.claim_webhooks(until, now=now)
        assert claimed.id == job_id and claimed.callback_url == HOOK
        assert store.jobs.claim_webhooks(until + 60, now=now + 59) == []
        (again,) = store.jobs.claim_webhooks(until + 120, now=until + 1)  # its sender died
        assert again.id == job_id


def test_a_sender_whose_lease_was_lost_cannot_report(database: str) -> None:
    with Store(database) as store:
        (job_id,) = _finished(store, 1)
        now = time.time()
        first = int(now) + 60
        store.jobs.claim_webhooks(first, now=now)
        second = first + 61
        store.jobs.claim_webhooks(second, now=first + 1)
        assert store.jobs.webhook_done(job_id, first, False, 5.0) is False
        assert _state(store, job_id) == ("sending", 0, second)
        assert store.jobs.webhook_done(job_id, second, True, None) is True
        assert _state(store, job_id)[:2] == ("delivered", 1)
        assert store.jobs.claim_webhooks(second + 600, now=second + 300) == []


def test_a_failed_attempt_is_due_again_after_its_backoff(database: str) -> None:
    with Store(database) as store:
        (job_id,) = _finished(store, 1)
        until = int(time.time()) + 60
        store.jobs.claim_webhooks(until)
        assert store.jobs.webhook_done(job_id, until, False, 30.0) is True
        state, attempts, after = _state(store, job_id)
        assert (state, attempts) == ("due", 1) and after >= time.time() + 29
        assert store.jobs.claim_webhooks(until) == []
        assert [j.id for j in store.jobs.claim_webhooks(after + 60, now=after)] == [job_id]
        assert store.jobs.webhook_done(job_id, after + 60, False, None) is True
        assert _state(store, job_id)[:2] == ("gave_up", 2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver(pause_s=0.2)
    yield found
    found.stop()


def test_two_replicas_delivering_at_once_post_each_job_once(database: str,
                                                            receiver: Receiver) -> None:
    with Store(database) as one, Store(database) as other:
        ids = _finished(one, 12, receiver.url)

        async def rounds() -> None:
            senders = [Webhooks(one.jobs, Signer(SECRET), LOOPBACK),
                       Webhooks(other.jobs, Signer(SECRET), LOOPBACK)]
            deadline = time.monotonic() + 10
            # Rounds overlap while the receiver takes its time, until every job is sent.
            while len(receiver.seen) < len(ids) and time.monotonic() < deadline:
                await asyncio.gather(*(sender.deliver_due() for sender in senders))
                await asyncio.sleep(0.05)
            for sender in senders:
                await sender.settle()
                await sender.aclose()

        asyncio.run(rounds())
        assert sorted(receiver.ids()) == sorted(ids)
        assert {_state(one, job_id)[:2] for job_id in ids} == {("delivered", 1)}


def test_a_sender_that_lost_its_lease_says_so_and_writes_nothing(
        database: str, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    with Store(database) as store:
        (job_id,) = _finished(store, 1, receiver.url)
        now = time.time()
        first, second = int(now) + 60, int(now) + 200
        (job,) = store.jobs.claim_webhooks(first, now=now)
        store.jobs.claim_webhooks(second, now=first + 1)  # it stalled past its lease

        async def late() -> None:
            sender = Webhooks(store.jobs, Signer(SECRET), LOOPBACK)
            await sender.deliver(job, first)
            await sender.aclose()

        asyncio.run(late())
        assert _state(store, job_id) == ("sending", 0, second)
        assert "its lease ran out" in caplog.text


class OutcomeRefused(Jobs):
    """The jobs table, except that writing an attempt's outcome raises `error`: once, or
    while `refusing` (each refusal counted)."""

    def __init__(self, db: Database, error: Exception, once: bool = True) -> None:
        super().__init__(db)
        self.error, self.once, self.refusing, self.refused = error, once, True, 0

    def webhook_done(self, job_id: str, until: int, delivered: bool,
                     retry_in_s: float | None) -> bool:
        if self.refusing:
            self.refused += 1
            self.refusing = not self.once
            raise self.error
        return super().webhook_done(job_id, until, delivered, retry_in_s)


def test_an_outcome_the_database_refused_once_is_written_before_the_lease_ends(
        database: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Left unwritten, the attempt stayed `sending` and was POSTed again by whichever replica
    claimed it once its lease ran out."""
    monkeypatch.setattr(supervise, "FIRST_PAUSE_S", 0.01)
    with Store(database) as store:
        (job_id,) = _finished(store, 1, receiver.url)
        blipping = OutcomeRefused(store.db, DatabaseUnavailable("PostgreSQL is unavailable"))

        async def send() -> None:
            sender = Webhooks(blipping, Signer(SECRET), LOOPBACK)
            await sender.deliver_due()
            await sender.settle()
            await sender.aclose()

        asyncio.run(send())
        assert blipping.refused == 1 and receiver.ids() == [job_id]
        assert _state(store, job_id)[:2] == ("delivered", 1)
        later = time.time() + WEBHOOK_LEASE_S + 1
        assert store.jobs.claim_webhooks(int(later) + 60, now=later) == []


def test_a_sent_attempt_stopped_while_its_outcome_waits_is_not_sent_again(
        database: str, receiver: Receiver) -> None:
    """The process stops while the outcome of a delivered attempt waits for the database:
    handing its lease back made it due at once, and another replica POSTed it again."""
    with Store(database) as store:
        (job_id,) = _finished(store, 1, receiver.url)
        jobs = OutcomeRefused(store.db, DatabaseUnavailable("PostgreSQL is unavailable"),
                              once=False)

        async def send_then_stop() -> None:
            sender = Webhooks(jobs, Signer(SECRET), LOOPBACK)
            await sender.deliver_due()
            while not jobs.refused:
                await asyncio.sleep(0.01)
            jobs.refusing = False  # the database answers again as the process stops
            await sender.aclose()

        asyncio.run(send_then_stop())
        assert receiver.ids() == [job_id]
        assert _state(store, job_id)[:2] == ("delivered", 1)
        assert store.jobs.claim_webhooks(int(time.time()) + 60) == []


def test_an_outcome_that_broke_is_not_kept_for_a_later_stop(
        database: str, receiver: Receiver) -> None:
    """Kept, it was written at the next stop in place of a later attempt's hand-back."""
    with Store(database) as store:
        (job_id,) = _finished(store, 1, receiver.url)
        breaking = OutcomeRefused(store.db, RuntimeError("a bug"))

        async def send() -> dict[object, object]:
            sender = Webhooks(breaking, Signer(SECRET), LOOPBACK)
            await sender.deliver_due()
            await sender.settle()
            left = dict(sender._unwritten)  # what aclose would write
            await sender.aclose()
            return left

        assert asyncio.run(send()) == {} and breaking.refused == 1
        assert _state(store, job_id)[:2] == ("sending", 0)  # its lease runs out, as before


def _batch(store: Store, items: int) -> str:
    key = store.create_key("k")[0].id
    stored = store.batches.add_file(key, "batch", "in.jsonl", b"")
    batch = store.batches.create(key, "/v1/images/generations", stored.id, "24h", None,
                                 [(f"c{i}", BODY) for i in range(items)], b"")
    return batch.id


def _run_items(store: Store, status: int = 200) -> None:
    while claimed := store.jobs.claim_many(60, 50):
        for job in claimed:
            store.jobs.finish(job.id, status, b"{}")


def test_a_finished_batch_is_finalized_once_by_replicas_at_once(database: str) -> None:
    """The job worker's finalize round, run by three threads of two replicas at once."""
    with Store(database) as one, Store(database) as other:
        batch_id = _batch(one, 3)
        replicas = [SimpleNamespace(store=one), SimpleNamespace(store=other)]
        finalize(replicas[0])  # type: ignore[arg-type]  (finalize reads svc.store only)
        assert one.batches.get(batch_id).status == "in_progress", "items still queued"
        _run_items(one)
        _together([lambda svc=svc: finalize(svc) for svc in replicas for _ in range(3)])
        batch = other.batches.get(batch_id)
        assert batch is not None and batch.status == "completed"
        assert batch.output_file_id is not None and batch.error_file_id is None
        files = one.db.query("SELECT id, purpose FROM files WHERE batch_id = ?", (batch_id,))
        assert files == [(batch.output_file_id, "batch_output")]
        assert batch.times["completed_at"] is not None and batch.times["finalizing_at"]
        assert one.batches.finalize(batch_id) is False, "finalized already"


def test_a_cancelled_batch_ends_cancelled_with_its_error_file(database: str) -> None:
    with Store(database) as store:
        batch_id = _batch(store, 2)
        (running,) = store.jobs.claim_many(60, 1)
        store.batches.cancel(batch_id)
        assert store.batches.finalize(batch_id) is False, "an item is still running"
        store.jobs.finish(running.id, 200, b"{}")
        assert store.batches.finalize(batch_id) is True
        batch = store.batches.get(batch_id)
        assert batch is not None and batch.status == "cancelled"
        assert batch.output_file_id and batch.error_file_id
        assert store.batches.finalize(batch_id) is False
