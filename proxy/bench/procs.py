"""The overhead benchmark's processes: the fake upstream and Switchyard itself, each started as a
user would start it, on real loopback sockets, and read through /proc while they run; and, for
an https upstream, a throwaway certificate made with the openssl command."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from proxy.billing.store import Store

MODEL = "bench-image"
KEY_ENV = "SWITCHYARD_BENCH_UPSTREAM_KEY"
START_TIMEOUT_S = 30.0

_PROVIDERS = """\
[bench]
protocol = "openai_images"
base_url = "{scheme}://127.0.0.1:{port}/v1"
key_env = "{key_env}"
timeout_s = 120
max_in_flight = 64
"""
_MODEL = """\
name = "{model}"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1"]
output_formats = ["png", "jpeg"]

[[routes]]
provider = "bench"
upstream_model = "{model}"
typical_latency_s = 1
price.per_image = {{ "1K" = 0.01 }}
options.sizes = ["1024x1024"]
"""


class BenchError(RuntimeError):
    """A process would not start, or a request did not come back as it should."""


@dataclass(frozen=True, slots=True)
class Cert:
    """A self-signed certificate for 127.0.0.1 and its key (PEM): the fake upstream's, and
    the one CA the benchmark's clients and Switchyard (options.ca_file) trust."""

    cert: Path
    key: Path


def throwaway_cert(directory: Path) -> Cert:
    """A fresh P-256 certificate for IP 127.0.0.1, valid two days, written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    made = Cert(directory / "cert.pem", directory / "key.pem")
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
               "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(made.key),
               "-out", str(made.cert)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT_S)
    except FileNotFoundError:
        raise BenchError("--https needs the openssl command to make a certificate") from None
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"openssl could not make a certificate: {exc.stderr.decode()}") \
            from None
    return made


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM unwinds the benchmark as Ctrl-C does, so the processes it started are stopped
    too, not left behind listening; the previous handler is put back after. The signal may
    land between a process's start and the block that stops it (Popen has forked, the
    `try` is not entered yet): what is left of this process's children is stopped then."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM:
            _stop_all(children(os.getpid()))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_all(pids: Sequence[int]) -> None:
    """Terminate the processes (this one's children), kill those still there after 5 s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.02)


@contextlib.contextmanager
def upstream(sizes: Sequence[int], delay_s: float, cert: Cert | None = None,
             formats: Sequence[str] = ("png",)) -> Iterator[int]:
    """The fake upstream (proxy.bench.upstream) in its own process, on https with `cert`,
    with each size in each of `formats`; yields its port."""
    command = [sys.executable, "-m", "proxy.bench.upstream", "--sizes",
               ",".join(str(s) for s in sizes), "--formats", ",".join(formats),
               "--delay", str(delay_s)]
    if cert is not None:
        command += ["--cert", str(cert.cert), "--key", str(cert.key)]
    with _listening(command, "the fake upstream") as port:
        yield port


@contextlib.contextmanager
def relay(upstream_port: int, cert: Cert | None, loop: str) -> Iterator[int]:
    """The bare relay (proxy.bench.relay) in front of the upstream, on `loop`; yields its
    port."""
    command = [sys.executable, "-m", "proxy.bench.relay", "--upstream-port", str(upstream_port),
               "--loop", loop]
    if cert is not None:
        command += ["--ca-file", str(cert.cert)]
    with _listening(command, "the relay") as port:
        yield port


@contextlib.contextmanager
def otlp_sink() -> Iterator[int]:
    """A local OTLP/HTTP receiver that counts spans (proxy.bench.otlp_sink); yields its
    port."""
    with _listening([sys.executable, "-m", "proxy.bench.otlp_sink"], "the OTLP sink") as port:
        yield port


@contextlib.contextmanager
def _listening(command: Sequence[str], name: str) -> Iterator[int]:
    """`command` in its own process, which prints the port it listens on first; yields it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
        line = process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise BenchError(f"{name} did not start")
        yield int(line)
    finally:
        _stop(process)


def write_routes(routes_dir: Path, upstream_port: int, ca_file: Path | None = None) -> None:
    """A catalog of one provider (the fake upstream, openai_images) and one model; with
    `ca_file` the upstream is on https and that file is the provider's options.ca_file."""
    (routes_dir / "models").mkdir(parents=True, exist_ok=True)
    providers = _PROVIDERS.format(scheme="https" if ca_file else "http", port=upstream_port,
                                  key_env=KEY_ENV)
    if ca_file is not None:  # a JSON string is a TOML basic string
        providers += f"options = {{ ca_file = {json.dumps(str(ca_file))} }}\n"
    (routes_dir / "providers.toml").write_text(providers)
    (routes_dir / "models" / f"{MODEL}.toml").write_text(_MODEL.format(model=MODEL))


def create_key(data_dir: Path) -> str:
    with Store(data_dir / "switchyard.db") as store:
        return store.create_key("bench")[1]


@dataclass(frozen=True, slots=True)
class Server:
    pid: int
    base_url: str


@contextlib.contextmanager
def switchyard(routes_dir: Path, data_dir: Path, serve_args: Sequence[str] = (),
               settings: Mapping[str, str] | None = None) -> Iterator[Server]:
    """`python -m proxy serve --port P [serve_args]` with the bench catalog, until the block
    ends; `settings` are more environment variables (SWITCHYARD_DATABASE_URL, ...). Traces
    are off unless `settings` turn them on (OTEL_EXPORTER_OTLP_ENDPOINT)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHYARD_", "OTEL_"))}
    env.update({"SWITCHYARD_ROUTES_DIR": str(routes_dir), "SWITCHYARD_DATA_DIR": str(data_dir),
                "SWITCHYARD_DEMO": "0", KEY_ENV: "sk-bench-upstream", **(settings or {})})
    log_path = data_dir / "switchyard.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--port", str(port),
                                    *serve_args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(process, base_url, log_path)
        yield Server(process.pid, base_url)
    finally:
        _stop(process)


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"Switchyard did not become ready; its log ends:\n{tail}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


# --- /proc ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """`pid`'s child processes, read from /proc (those of each of its threads)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of a process."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(field.encode() + b":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User plus system CPU time the process has used; with `reaped`, its children's too
    once it has waited for them (a server's backends that ended)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    used = sum(int(f) for f in fields[11:15 if reaped else 13])
    return used / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """A process's peak RSS over a block: the kernel's VmHWM, reset at the start when
    /proc/PID/clear_refs allows it, and a sampler thread reading VmRSS every few ms as a
    cross-check (and the only source where the reset is refused)."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.sampled = 0
        self.peak = 0
        self._reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
                refs.write("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = rss_bytes(self.pid, "VmHWM") if self._reset else 0
        self.peak = max(self.sampled, hwm)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, BenchError):
                self.sampled = max(self.sampled, rss_bytes(self.pid))
            self._stop.wait(self.interval_s)
