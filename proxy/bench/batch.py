"""`switchyard bench batch`: push a large batch through the real scheduler and measure it.

Switchyard runs in this process (uvicorn, real sockets, the SQLite queue, the job worker, the
router, billing) in front of fake hosts with concurrency caps and realistic latencies, on a
clock `time_scale` times real speed. A batch goes in through the Batch API as a user sends it;
the report says how close throughput came to what the caps allow (sum of cap / mean latency),
whether any host went past its cap, what an image cost, and what the scheduler itself costs
per item (a second, smaller batch on zero-latency hosts, so only Switchyard's own work shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import uvicorn

from proxy import catalog as catalog_module
from proxy.app import build_app
from proxy.bench.batch_hosts import BatchApi, Host, HostSpec
from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from proxy.config import load
from proxy.providers import ADAPTERS

MODEL = "bench-image"
KEY_ENV = "BENCH_KEY"  # the hosts' key variable in the catalog
TARGET_SHARE = 0.90
# Typical latencies and prices of Nano Banana hosts (routes/models/nano-banana*.toml); caps
# as a host's rate tier might set them.
MARKET: tuple[HostSpec, ...] = (
    HostSpec("budget", 8, 9.0, Decimal("0.030")),
    HostSpec("mid", 16, 6.0, Decimal("0.039")),
    HostSpec("steady", 12, 8.0, Decimal("0.045")),
    HostSpec("premium", 8, 3.0, Decimal("0.067")),
)
# Gemini 2.5 Flash Image through the Batch API: half price, done in minutes (often more).
BATCH_API = HostSpec("batch-api", 10_000, 600.0, Decimal("0.0195"), deferred=True)
OVERHEAD_MARKET: tuple[HostSpec, ...] = (HostSpec("instant", 64, 0.0, Decimal("0.030")),)


@dataclass(frozen=True, slots=True)
class Outcome:
    items: int
    succeeded: int
    seconds: float  # from the batch's creation to the last host's last answer
    completed_s: float  # ... to the batch reading "completed" (its files written)
    cpu_s: float
    hosts: tuple[Host | BatchApi, ...]

    @property
    def throughput(self) -> float:
        return self.items / self.seconds

    def allowed(self) -> float:
        """Items per second the caps allow: each host full, at its observed mean latency."""
        return sum(h.spec.cap / h.mean_latency_s() for h in self.hosts
                   if isinstance(h, Host) and h.served)

    def cost_per_image(self) -> Decimal:
        spent = sum((h.spec.usd_per_image * h.served for h in self.hosts), Decimal(0))
        return spent / max(1, sum(h.served for h in self.hosts))


def write_routes(root: Path, market: Sequence[HostSpec], time_scale: float,
                 origins: Mapping[str, str] | None = None) -> None:
    """A catalog of one model served by every host of the market: OpenAI-shaped hosts, and
    the Gemini Batch API for a deferred one (polled and gathered on the same fast clock).
    `origins` (host name -> scheme://host:port) puts hosts on real sockets; the others are
    https://NAME.bench.invalid, for transports handed to the app."""
    (root / "models").mkdir(parents=True)
    found = origins or {}
    (root / "providers.toml").write_text("".join(
        _provider(h, time_scale, found.get(h.name, f"https://{h.name}.bench.invalid"))
        for h in market))
    routes = "".join(
        f'[[routes]]\nprovider = "bench-{h.name}"\n'
        f'upstream_model = "{"gemini-2.5-flash-image" if h.deferred else "gpt-image-1"}"\n'
        f"typical_latency_s = {max(h.latency_s * time_scale, 0.001)}\n"
        f'price.per_image = {{ "1K" = {h.usd_per_image} }}\n'
        + ("options.image_sizes = {}\n\n" if h.deferred else
           'options.sizes = ["1024x1024"]\n\n') for h in market)
    (root / "models" / f"{MODEL}.toml").write_text(
        f'name = "{MODEL}"\ndefault_strategy = "cheapest"\n\n[capabilities]\n'
        f'aspect_ratios = ["1:1"]\nmax_n = 1\noutput_formats = ["png"]\n\n{routes}')


def _provider(host: HostSpec, time_scale: float, origin: str) -> str:
    common = f'key_env = "{KEY_ENV}"\nmax_in_flight = {host.cap}\ntimeout_s = 120\n'
    if host.deferred:
        return (f'[bench-{host.name}]\nprotocol = "gemini_batch"\ndeferred = true\n'
                f'base_url = "{origin}/v1beta"\n{common}'
                f"options = {{ poll_s = {30 * time_scale}, gather_s = {5 * time_scale} }}\n\n")
    return (f'[bench-{host.name}]\nprotocol = "openai_images"\n'
            f'base_url = "{origin}/v1"\n{common}\n')


def batch_file(items: int) -> bytes:
    return b"".join(orjson.dumps({
        "custom_id": f"item-{i}", "method": "POST", "url": "/v1/images/generations",
        "body": {"model": MODEL, "prompt": f"catalog render {i}", "size": "1024x1024"}},
        option=orjson.OPT_APPEND_NEWLINE) for i in range(items))


@contextlib.asynccontextmanager
async def _switchyard(market: Sequence[HostSpec], time_scale: float, seed: int,
                      workdir: Path, limits: KeyLimits | None
                      ) -> AsyncIterator[tuple[str, str, tuple[Host | BatchApi, ...]]]:
    """Switchyard on a real socket in this loop, its hosts faked: (base url, key, hosts)."""
    write_routes(workdir / "routes", market, time_scale)
    config = load(env={}, data_dir=workdir / "data", routes_dir=workdir / "routes")
    catalog = catalog_module.load(workdir / "routes", env={KEY_ENV: "bench-upstream"},
                                  demo=False, protocols=ADAPTERS)
    hosts = tuple(BatchApi(spec, time_scale) if spec.deferred else
                  Host(spec, time_scale, seed + i) for i, spec in enumerate(market))
    with Store(config.database) as store:
        key = store.create_key("bench", limits=limits)[1]
    app = build_app(config, catalog, {f"bench-{h.spec.name}": h for h in hosts})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", key, hosts
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def run_batch(market: Sequence[HostSpec], items: int, time_scale: float, seed: int,
                    progress: bool = True, limits: KeyLimits | None = None) -> Outcome:
    """One batch of `items` through a fresh Switchyard, its key under `limits`; waits until
    the batch completes."""
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        async with _switchyard(market, time_scale, seed, Path(tmp), limits) as (
                base, key, hosts), \
                httpx.AsyncClient(base_url=base, timeout=120,
                                  headers={"authorization": f"Bearer {key}"}) as http:
            file_id = await upload(http, items)
            cpu = time.process_time()
            started, completed_s, succeeded = await complete(http, file_id, items, progress)
            cpu_s = time.process_time() - cpu
            last = max(h.last_answer for h in hosts)
            return Outcome(items, succeeded, last - started, completed_s, cpu_s, hosts)


async def upload(http: httpx.AsyncClient, items: int) -> str:
    """The batch's input file of `items` generations, uploaded; its file id."""
    sent = await http.post("/v1/files", data={"purpose": "batch"},
                           files={"file": ("items.jsonl", batch_file(items))})
    sent.raise_for_status()
    file_id: str = sent.json()["id"]
    return file_id


async def complete(http: httpx.AsyncClient, file_id: str, items: int,
                   progress: bool) -> tuple[float, float, int]:
    """Create the batch of the file and poll it until it ends: (monotonic time it was
    created at, seconds until it ended, items completed)."""
    started = time.monotonic()
    created = await http.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/images/generations",
        "completion_window": "24h"})
    created.raise_for_status()
    batch = created.json()
    while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
        await asyncio.sleep(0.25)
        batch = (await http.get(f"/v1/batches/{batch['id']}")).json()
        if progress:
            counts = batch["request_counts"]
            print(f"\r  {counts['completed'] + counts['failed']}/{items}", end="", flush=True)
    if progress:
        print("\r" + " " * 24 + "\r", end="")
    return started, time.monotonic() - started, int(batch["request_counts"]["completed"])


def host_table(run: Outcome) -> list[str]:
    """Each interactive host's cap, peak calls at once, calls served, mean latency, the share
    of its slot-seconds in use, and its price."""
    lines = [f"{'host':<10}{'cap':>5}{'peak':>6}{'served':>8}{'mean s':>8}{'busy':>8}"
             f"{'$/image':>9}"]
    for host in run.hosts:
        if not isinstance(host, Host):
            continue
        busy = host.busy_slot_s() / (host.spec.cap * run.seconds)
        lines.append(f"{host.spec.name:<10}{host.spec.cap:>5}{host.peak:>6}{host.served:>8}"
                     f"{host.mean_latency_s():>8.2f}{busy:>8.1%}{host.spec.usd_per_image:>9}")
    return lines


def render(run: Outcome, patient: Outcome | None, overhead: Outcome, time_scale: float
           ) -> str:
    lines = host_table(run)
    share = run.throughput / run.allowed()
    over = [h.spec.name for h in run.hosts if isinstance(h, Host) and h.peak > h.spec.cap]
    per_item_ms = overhead.seconds / overhead.items * 1000
    lines += [
        "",
        f"interactive hosts only: {run.succeeded}/{run.items} items succeeded; last answer "
        f"after {run.seconds:.1f} s, batch completed after {run.completed_s:.1f} s (clock "
        f"{1 / time_scale:g}x real: host latencies x{time_scale:g})",
        f"{'PASS' if share >= TARGET_SHARE else 'FAIL'} throughput {run.throughput:.1f} "
        f"items/s = {share:.1%} of the {run.allowed():.1f} items/s the caps allow "
        f"(sum of cap / mean latency; target >= {TARGET_SHARE:.0%})",
        f"{'FAIL' if over else 'PASS'} no host past its cap"
        + (f" (over: {', '.join(over)})" if over else ""),
        f"cost ${run.cost_per_image():.4f} per image, all interactive (cheapest first, "
        f"spilling to dearer hosts as caps fill)",
    ]
    if patient is not None:
        api = next(h for h in patient.hosts if isinstance(h, BatchApi))
        saving = 1 - patient.cost_per_image() / run.cost_per_image()
        lines.append(
            f"with the Gemini Batch API ({api.spec.latency_s / 60:g} min turnaround, "
            f"${api.spec.usd_per_image}/image): {patient.succeeded}/{patient.items} items, "
            f"{api.served} of them in {api.creates} upstream batches ({api.polls} polls); "
            f"cost ${patient.cost_per_image():.4f} per image, {saving:.0%} less than all "
            f"interactive; completed after {patient.completed_s:.1f} s")
    lines.append(
        f"scheduler overhead: {overhead.items} items on zero-latency hosts, "
        f"{overhead.throughput:.0f} items/s: {per_item_ms:.2f} ms wall and "
        f"{overhead.cpu_s / overhead.items * 1000:.2f} ms CPU per item (queue, routing, "
        f"billing, the Batch API)")
    return "\n".join(lines)


def main(items: int = 10_000, time_scale: float = 0.1, seed: int = 1,
         overhead_items: int = 2_000, deferred: bool = True) -> str:
    shown = sys.stdout.isatty()  # a progress count on a terminal, none in a log

    async def every() -> tuple[Outcome, Outcome | None, Outcome]:
        run = await run_batch(MARKET, items, time_scale, seed, shown)
        patient = await run_batch((*MARKET, BATCH_API), items, time_scale, seed, shown) \
            if deferred else None
        overhead = await run_batch(OVERHEAD_MARKET, overhead_items, 1.0, seed, shown)
        return run, patient, overhead

    return render(*asyncio.run(every()), time_scale)
