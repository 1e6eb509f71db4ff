"""proxy.bench overhead: the fake upstream's real images, scenario parsing, the pairing and the
withheld shares, and smoke runs of the whole benchmark driven by hey (--quick; not timed: no
figure is asserted, only that each is printed), on http through the CLI, with two workers, and
on https with its throwaway certificate."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import PIL.Image
import pytest

from proxy import catalog, cli, imaging, verify
from proxy.bench import load, overhead, overhead_report, procs, real_images, upstream
from proxy.bench.overhead import Scenario
from proxy.bench.sides import Run
from proxy.domain import Image
from proxy.providers import ADAPTERS
from proxy.upstream import tls


@pytest.mark.parametrize("chars", [76, 2_000, 1_400_000])
def test_the_payload_is_base64_of_a_1024_square_png(chars: int) -> None:
    """Well formed as Switchyard checks every image it bills (proxy.verify)."""
    text = upstream.png_base64(chars)
    assert len(text) == chars
    data = base64.b64decode(text, validate=True)
    assert imaging.sniff(data) == "png" and imaging.dimensions(data) == (1024, 1024)
    assert verify.header_checked(Image("image/png", text), 2_000_000).b64 == text


def test_the_body_is_openai_shaped() -> None:
    body = upstream.response_body(2_000)
    assert body.startswith(b'{"created":') and b'"data":[{"b64_json":"' in body


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("chars", [2_000, 1_400_000])
def test_the_host_sends_real_images_of_the_stated_size(chars: int, fmt: str) -> None:
    """A decoder opens them, and Switchyard's checks take them as they are."""
    text = real_images.image_base64(chars, fmt)
    assert len(text) == chars
    data = base64.b64decode(text, validate=True)
    with PIL.Image.open(io.BytesIO(data)) as picture:
        picture.load()
        assert (picture.format or "").lower() == fmt
    assert verify.header_checked(Image(verify.MIME[fmt], text), 36_000_000).b64 == text


@pytest.mark.parametrize(("text", "scenario"), [
    ("1.4MB:8", Scenario(1_400_000, 8)),
    ("2kb:1", Scenario(2_000, 1)),
    ("6MB", Scenario(6_000_000, 1)),
    ("5001:3", Scenario(5_000, 3)),
    ("1.4MB:8:jpeg", Scenario(1_400_000, 8, "jpeg")),
])
def test_scenarios_parse(text: str, scenario: Scenario) -> None:
    assert overhead.parse_scenario(text) == scenario


@pytest.mark.parametrize("text", ["big:2", "1.4MB:x", "8:1", "2KB:0", "2KB:1:gif"])
def test_bad_scenarios_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        overhead.parse_scenario(text)


def test_a_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "overhead", "--scenario", "huge"]) == 2
    assert "SIZE:CONCURRENCY" in capsys.readouterr().err


_NUMBER = r"(-?[\d.]+)"
_SIDE = re.compile(rf"^(?P<label>[\d.]+ [KM]?B x\d+ (png|jpeg))?\s+(?P<side>direct|relay|"
                   rf"switchyard|\d workers)\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+"
                   rf"{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+(?P<odd>\d+)$")


def check_rows(out: str, scenarios: tuple[Scenario, ...], workers: int = 1) -> None:
    """Every scenario has a line per side with positive req/s and ordered latencies, the
    client's CPU beside them, no failed request, and a headline."""
    found: dict[str, list[str]] = {}
    label = ""
    for match in map(_SIDE.match, out.splitlines()):
        if match is None:
            continue
        label = match["label"] or label
        rps, p50, p99, cpu, client, busy = (float(x) for x in match.groups()[3:9])
        assert min(rps, p50, p99) > 0 and p50 <= p99 and cpu >= 0 and client > 0, out
        assert busy > 0 and match["odd"] == "0", out
        found.setdefault(label, []).append(match["side"])
    expected = ["direct", "relay", "switchyard"] + ([f"{workers} workers"] if workers > 1 else [])
    assert found == {s.label: expected for s in scenarios}, out
    for scenario in scenarios:
        assert re.search(rf"  {scenario.label}: [+-][\d.]+ ms p50, [+-][\d.]+ ms CPU", out), out


def test_a_share_is_withheld_when_the_client_may_set_the_pace() -> None:
    def run(client_cores: float, throughput: float) -> Run:
        return Run(1.0, (0.001,) * int(throughput), Counter({"200": int(throughput)}),
                   client_cores, 0.5, 1.0, 1.0)

    row = overhead.Row(Scenario(2_000, 1), direct=(run(0.9, 4000),), relayed=(run(0.5, 2000),),
                       proxied=(run(0.3, 1000),), workers=(), idle_rss=0, peak_rss=(0,))
    assert row.share_of(row.relayed) == (0.5, "")
    share, why = row.share_of(row.direct)
    assert share is None and "hey at 90% of a core" in why


def test_differences_pair_each_round() -> None:
    def run(p50_ms: float, cpu_s: float = 0.0) -> Run:
        return Run(1.0, (p50_ms / 1000,) * 3, Counter({"200": 3}), 0.1, cpu_s, 1.0, 1.0)

    # The machine is slow during the second round only: Switchyard is 0.1 to 0.5 ms behind
    # the host in each round (median 0.2), but the medians of the runs taken apart differ by
    # 0.5 ms.
    row = overhead.Row(Scenario(2_000, 1), direct=(run(1.0), run(2.0), run(1.0)),
                       relayed=(run(1.2, 0.3), run(2.3, 0.6), run(1.1, 0.3)),
                       proxied=(run(1.5, 0.9), run(2.1, 1.5), run(1.2, 1.2)), workers=(),
                       idle_rss=0, peak_rss=(0, 0, 0))
    assert row.p50(row.proxied) - row.p50(row.direct) == pytest.approx(0.0005)
    assert row.added_p50_s == pytest.approx(0.0002)
    assert row.relay_added_p50_s == pytest.approx(0.0002)  # of 0.2, 0.3, 0.1
    assert row.over_relay_p50_s == pytest.approx(0.0001)  # of 0.3, -0.2, 0.1
    assert row.over_relay_cpu_s == pytest.approx(0.3)  # of 0.2, 0.3, 0.3 per request


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_bare_relay_forwards_replies_whole_on_one_connection(loop: str) -> None:
    body = load.request_body(1_400_000)
    with procs.upstream([2_000, 1_400_000], 0.0) as port, \
            procs.relay(port, None, loop) as relay_port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as direct:
            expected = direct.post(load.PATH, content=body).content
        with httpx.Client(base_url=f"http://127.0.0.1:{relay_port}") as relayed:
            replies = [relayed.post(load.PATH, content=body) for _ in range(3)]
            missing = relayed.post("/v1/nowhere", content=b"{}")
    assert all(r.status_code == 200 and r.content == expected for r in replies)
    assert len(expected) > 1_400_000
    assert missing.status_code == 404  # the upstream's answer, passed on as it came


def test_a_quick_run_prints_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "overhead", "--quick"]) == 0
    out = capsys.readouterr().out
    check_rows(out, overhead.SCENARIOS)
    verdicts = [line for line in out.splitlines() if line[:4] in ("PASS", "FAIL", "N/A ")]
    assert len(verdicts) == 8 and "hey" in out and "wall time" in out


def test_a_quick_run_with_two_workers_prints_them() -> None:
    chosen = overhead.options(quick=True, scenarios=["2KB:4"], workers=2)
    check_rows(overhead.main(chosen), chosen.scenarios, workers=2)


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="the https benchmark makes its certificate with openssl")


@needs_openssl
def test_the_https_catalog_trusts_the_throwaway_certificate(tmp_path: Path) -> None:
    cert = procs.throwaway_cert(tmp_path / "tls")
    procs.write_routes(tmp_path / "routes", 4443, cert.cert)
    env = {procs.KEY_ENV: "k"}
    (provider,) = catalog.load(tmp_path / "routes", env, False, ADAPTERS).providers
    assert provider.base_url == "https://127.0.0.1:4443/v1"
    assert provider.options["ca_file"] == str(cert.cert)
    context = tls.provider_context(provider)
    assert context is not None and len(context.get_ca_certs()) == 1


@needs_openssl
def test_a_quick_https_run_goes_through() -> None:
    chosen = overhead.options(quick=True, scenarios=["2KB:1", "1.4MB:2:jpeg"], https=True)
    out = overhead.main(chosen)
    assert "host in its own process on https" in out
    check_rows(out, chosen.scenarios)


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_sigterm_stops_the_processes_the_benchmark_started() -> None:
    bench = subprocess.Popen([sys.executable, "-m", "proxy", "bench", "overhead", "--scenario",
                              "2KB:1", "--seconds", "600"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(children := _children(bench.pid)) < 3:  # upstream, relay, Switchyard
            assert time.monotonic() < deadline and bench.poll() is None, "the bench did not start"
            time.sleep(0.1)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) == 128 + signal.SIGTERM
        left = [c for c in children if Path(f"/proc/{c}").exists()
                and ") Z " not in Path(f"/proc/{c}/stat").read_text()]
        assert not left
    finally:
        bench.kill()
        for child in children:  # whatever a failure left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


_STARTED_AS_IT_CAME = """
import os, signal, subprocess, sys, time
from proxy.bench import procs
with procs.stopped_by_sigterm():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # before any block that would stop it
    time.sleep(30)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_sigterm_stops_a_process_the_benchmark_had_just_started() -> None:
    """The signal may land between a process's start and the block that stops it (the CI
    run that caught it sent SIGTERM as the third child appeared): it is stopped all the
    same."""
    bench = subprocess.run([sys.executable, "-c", _STARTED_AS_IT_CAME], capture_output=True,
                           text=True, timeout=30, check=False)
    child = int(bench.stdout.split()[0])
    try:
        assert bench.returncode == 128 + signal.SIGTERM
        assert not Path(f"/proc/{child}").exists(), "the child was left running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_the_workers_ceiling_is_what_the_cores_leave_after_the_others() -> None:
    def run(server_cpu_s: float, busy_s: float) -> Run:
        return Run(1.0, (0.001,) * 1000, Counter({"200": 1000}), 0.2, server_cpu_s, busy_s, 1.0)

    # 1 ms of Switchyard's CPU and 0.5 ms of everyone else's per request: 2 cores serve at
    # most 2 / 1.5 ms = 1333 req/s, where one worker bound by its core serves 1000.
    row = overhead.Row(Scenario(2_000, 64), direct=(run(0.0, 1.0),), relayed=(run(0.2, 0.5),),
                       proxied=(run(1.0, 1.5),), workers=(run(1.3, 2.0),), idle_rss=0,
                       peak_rss=(0,))
    most, server, rest = overhead_report.workers_ceiling(row, 2, cores=2)
    assert (most, server, rest) == (pytest.approx(4 / 3), pytest.approx(0.001),
                                    pytest.approx(0.0005))
    assert overhead_report.workers_ceiling(row, 2, cores=8)[0] == 2.0  # never past N workers
