"""Slow upstreams on a real socket, for tests that kill a `serve` process in the middle of a
call: a submit-then-poll host in the generic `task` protocol's wire format, whose tasks stay
running for `task_s` after their submit, and a synchronous OpenAI-shaped host that takes
`sync_s` to answer. Both count what they receive, so a test tells a task polled again from
one submitted (and paid for) twice. They run on a loop of their own thread, so they outlive
the servers a test starts and kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from proxy.bench.hostile import images_body, json_reply, png_b64
from proxy.bench.loopback import LoopbackServer, on_own_loop, read_request

KEY_ENV = "SLOW_HOSTS_TEST_KEY"
TASK_PRICE = "0.04"
SYNC_PRICE = "0.03"


@dataclass
class SlowHosts(LoopbackServer):
    task_s: float = 4.0
    sync_s: float = 3.0
    port: int = 0
    submits: int = 0
    sync_calls: int = 0
    polls: Counter[str] = field(default_factory=Counter)  # task id -> polls
    tasks: dict[str, float] = field(default_factory=dict)  # task id -> when submitted
    _server: asyncio.Server | None = None

    def polled(self) -> int:
        """Tasks polled at least once (a poll is sent only once the submit is written down)."""
        return sum(1 for count in list(self.polls.values()) if count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, raw = await read_request(reader)
                body = orjson.loads(raw or b"{}")
                method, path = head.split(b" ")[:2]
                writer.write(await self._answer(method.decode(), path.decode(), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: dict[str, object]) -> bytes:
        if method == "POST" and path == "/task/v1/tasks":
            self.submits += 1
            task = f"task-{self.submits}"
            self.tasks[task] = time.monotonic()
            return json_reply(orjson.dumps({"id": task, "status": "running"}))
        if method == "GET" and path.startswith("/task/v1/tasks/"):
            return self._task(path.rsplit("/", 1)[1])
        if method == "POST" and path == "/sync/v1/images/generations":
            self.sync_calls += 1
            await asyncio.sleep(self.sync_s)
            return json_reply(images_body(png_b64(1024, 1024, str(body.get("prompt")))))
        return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    def _task(self, task: str) -> bytes:
        if task not in self.tasks:
            return (b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                    b"content-length: 34\r\n\r\n{\"error\": {\"message\": \"no task\"}}")
        self.polls[task] += 1
        if time.monotonic() < self.tasks[task] + self.task_s:
            return json_reply(orjson.dumps({"id": task, "status": "running"}))
        return json_reply(orjson.dumps({"id": task, "status": "succeeded",
                                        "image": png_b64(1024, 1024, task)}))


@contextlib.contextmanager
def running(hosts: SlowHosts) -> Iterator[SlowHosts]:
    """The hosts on a loop of their own thread until the block ends."""
    with on_own_loop(hosts):
        yield hosts


def catalog_files(hosts: SlowHosts) -> dict[str, str]:
    """routes/ for two models: `slow-task` on the task host, `slow-sync` on the sync one."""
    base = f"http://127.0.0.1:{hosts.port}"
    providers = f"""
[task-host]
protocol = "task"
base_url = "{base}/task"
key_env = "{KEY_ENV}"
timeout_s = 10
max_in_flight = 32

[task-host.options]
submit_path = "/v1/tasks"
task_id_path = "id"
poll_path = "/v1/tasks/{{id}}"
state_path = "status"
result_paths = ["image"]
poll_interval_s = 0.2
poll_interval_max_s = 0.2
max_wait_s = 60
body = {{ model = "{{model}}", prompt = "{{prompt}}" }}
states = {{ pending = ["running"], succeeded = ["succeeded"], failed = ["failed"] }}

[sync-host]
protocol = "openai_images"
base_url = "{base}/sync/v1"
key_env = "{KEY_ENV}"
timeout_s = 30
max_in_flight = 32
"""
    model = """name = "{name}"
owned_by = "tests"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1"]
max_n = 4

[[routes]]
provider = "{provider}"
upstream_model = "m"
price.per_image = {{ "1K" = {price} }}
{extra}"""
    return {"providers.toml": providers,
            "models/slow-task.toml": model.format(name="slow-task", provider="task-host",
                                                  price=TASK_PRICE, extra=""),
            "models/slow-sync.toml": model.format(name="slow-sync", provider="sync-host",
                                                  price=SYNC_PRICE,
                                                  extra='options.sizes = ["1024x1024"]\n')}
