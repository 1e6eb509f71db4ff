"""Creating a 50,000-line batch does not stall anyone else (issue 18.3), through a real
`switchyard serve`: another key's image requests answer as fast while the batch is checked and
written as before it (it used to block the event loop, and SQLite's one writer, for seconds).
Figures are printed; the bound is generous."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Final

import httpx
import openai
import orjson

from proxy.billing.store import Store
from tests.serving import Served

ENDPOINT: Final = "/v1/images/generations"
LINES = 50_000


def probe(base: str, key: str, stop: threading.Event, seconds: list[float]) -> None:
    """Image requests one after another until `stop`: each one's time."""
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"},
                      timeout=60) as client:
        while not stop.is_set():
            began = time.monotonic()
            reply = client.post(ENDPOINT, json={"model": "test-image", "prompt": "now"})
            seconds.append(time.monotonic() - began)
            assert reply.status_code == 200, reply.text
            time.sleep(0.01)


def figures(seconds: list[float]) -> str:
    p99 = statistics.quantiles(seconds, n=100, method="inclusive")[98] \
        if len(seconds) > 1 else seconds[0]
    return f"{len(seconds)} requests, p99 {p99 * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms"


def test_other_requests_do_not_wait_while_a_big_batch_is_created(tmp_path: Path) -> None:
    with Served(tmp_path / "data") as served:
        with Store(tmp_path / "data" / "switchyard.db") as store:
            big, other = store.create_key("big")[1], store.create_key("other")[1]
        sdk = openai.OpenAI(base_url=f"{served.base}/v1", api_key=big, max_retries=0,
                            timeout=600)
        content = b"\n".join(orjson.dumps({"custom_id": f"item-{i}", "method": "POST",
                                           "url": ENDPOINT, "body": {"model": "test-image",
                                                                     "prompt": f"p{i}"}})
                             for i in range(LINES))
        upload = sdk.files.create(file=("big.jsonl", content), purpose="batch")

        baseline: list[float] = []
        stop = threading.Event()
        threading.Timer(2.0, stop.set).start()
        probe(served.base, other, stop, baseline)

        during: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(served.base, other, stop, during))
        prober.start()
        time.sleep(0.3)
        began = time.monotonic()
        try:
            batch = sdk.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                       completion_window="24h")
        finally:
            took = time.monotonic() - began
            stop.set()
            prober.join()
        print(f"\n{LINES:,}-line batch created in {took:.1f} s; another key's requests "
              f"before: {figures(baseline)}; meanwhile: {figures(during)}")
        assert batch.status == "in_progress" and batch.request_counts is not None
        assert batch.request_counts.total == LINES
        assert max(during) < max(0.5, 2 * max(baseline))


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`: their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_bytes()
            if entry.name.isdigit() and int(stat.rpartition(b")")[2].split()[1]) == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")\
                    .decode()
        except (OSError, ValueError):
            continue
    return found


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return int(fields[11]) + int(fields[12])


def test_the_lines_are_checked_in_a_process_of_their_own(tmp_path: Path) -> None:
    """Checked on a thread, 50,000 lines held the server's GIL for over a second; in a
    process of its own (started at the first batch, stopped with the server) they never do."""
    with Served(tmp_path / "data") as served:
        assert served.process is not None
        with Store(tmp_path / "data" / "switchyard.db") as store:
            key = store.create_key("big")[1]
        assert not [c for c in children(served.process.pid).values() if "spawn_main" in c]
        sdk = openai.OpenAI(base_url=f"{served.base}/v1", api_key=key, max_retries=0,
                            timeout=600)
        content = b"\n".join(orjson.dumps({"custom_id": f"item-{i}", "method": "POST",
                                           "url": ENDPOINT, "body": {"model": "test-image",
                                                                     "prompt": f"p{i}"}})
                             for i in range(5_000)) + b"\nnot json\n"
        upload = sdk.files.create(file=("big.jsonl", content), purpose="batch")
        batch = sdk.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                   completion_window="24h")
        assert batch.request_counts is not None and batch.request_counts.total == 5_001
        assert batch.request_counts.failed == 1
        workers = [pid for pid, command in children(served.process.pid).items()
                   if "spawn_main" in command]
        assert len(workers) == 1, children(served.process.pid)
        assert cpu_ticks(workers[0]) > 0
    assert not Path(f"/proc/{workers[0]}").exists()  # stopped with the server, not left behind
