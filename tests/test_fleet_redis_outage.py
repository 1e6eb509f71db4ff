"""Redis stopped and restarted empty under a loaded fleet (issue 17, point 6): three real
`switchyard serve` processes keep answering with their own limits and slots while Redis is
away, go back to shared state by themselves when it returns, and lose nothing on the way: every
request the openai clients sent is answered 200, the ledger holds exactly those requests, each
once, and a key's `concurrency` has not leaked a slot (the whole of it is usable afterwards).

Each replica says so once per change of state in its log, not once per request.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from tests.redis_servers import PrivateRedis, private_redis
from tests.serving import free_port
from tests.test_fleet_limits import Fleet, generate, started

__all__ = ["private_redis"]  # a fixture

REPLICAS = 3
CLIENTS = 9  # the key's concurrency exactly: one leaked slot would refuse someone
LOST = "Redis is not answering"
BACK = "shared by the fleet"


def shared(fleet: Fleet) -> list[str]:
    return [httpx.get(f"{r.base}/readyz").json()["fleet"]["redis"] for r in fleet.replicas]


def test_redis_stopped_and_restarted_empty_mid_load_loses_nothing(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    with started(tmp_path, "fleet", 32, REPLICAS, redis_url=private_redis.url) as fleet:
        fleet.host.delay_s = 0.05
        key = fleet.key(KeyLimits(concurrency=CLIENTS))
        answers: list[tuple[int, dict[str, str]]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def one(i: int) -> None:
            with fleet.client(i % REPLICAS, key) as client:
                while not stop.is_set():
                    answer = generate(client)
                    with lock:
                        answers.append(answer)

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(one, i) for i in range(CLIENTS)]
            time.sleep(1.5)
            private_redis.kill()
            killed = time.monotonic()
            while shared(fleet) != ["unreachable"] * REPLICAS:
                assert time.monotonic() - killed < 5, shared(fleet)
                time.sleep(0.1)
            time.sleep(1.5)
            during = len(answers)
            private_redis.start()
            restarted = time.monotonic()
            while shared(fleet) != ["shared"] * REPLICAS:
                assert time.monotonic() - restarted < 5, "the fleet never shared again"
                time.sleep(0.05)
            back_after = time.monotonic() - restarted
            time.sleep(2.0)
            stop.set()
            for future in running:
                future.result()

        statuses = Counter(status for status, _ in answers)
        assert statuses == {200: len(answers)}, statuses
        assert len(answers) > during > 20, (during, len(answers))

        # The whole concurrency is there again: CLIENTS at once, all admitted.
        fleet.host.delay_s = 0.5
        clients = [fleet.client(i % REPLICAS, key) for i in range(CLIENTS)]
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            after = list(pool.map(generate, clients))
        for client in clients:
            client.close()
        assert [status for status, _ in after] == [200] * CLIENTS, \
            [(s, h.get("x-ratelimit-remaining-requests")) for s, h in after]

        ids = [headers["x-request-id"] for _, headers in answers + after]
        with Store(fleet.database) as store:
            rows = store.db.query("SELECT request_id, outcome FROM ledger")
        assert sorted(r[0] for r in rows) == sorted(ids), "the ledger is not the 200s"
        assert {r[1] for r in rows} == {"success"}

        for replica in fleet.replicas:
            log = replica.log()
            assert log.count(LOST) == 1 and log.count(BACK) == 2, (
                log.count(LOST), log.count(BACK))
        print(f"\n{len(answers)} requests, {during} before Redis came back; all 200, "
              f"each in the ledger once; shared again {back_after:.2f} s after the restart")


def test_a_redis_that_turns_read_only_is_said_once_by_a_real_replica(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    """`switchyard serve` whose Redis turns into a replica of a master nobody serves (a
    failover's leftover: it answers PING, and refuses every write): its requests go on on its
    own state, and its log says so once, not every second (the check was a PING, which called
    Redis back each time, and the next request lost it again)."""
    with started(tmp_path, "fleet", 8, 1, redis_url=private_redis.url) as fleet:
        key = fleet.key(KeyLimits(rpm=100_000))
        admin = redis.Redis.from_url(private_redis.url)
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        admin.close()
        statuses: Counter[int] = Counter()
        with fleet.client(0, key) as client:
            ends = time.monotonic() + 3.5
            while time.monotonic() < ends:
                statuses[generate(client)[0]] += 1
                time.sleep(0.05)
        assert set(statuses) == {200}, statuses
        assert shared(fleet) == ["unreachable"]
        log = fleet.replicas[0].log()
        assert (log.count(LOST), log.count(BACK)) == (1, 1)  # BACK: at its start
