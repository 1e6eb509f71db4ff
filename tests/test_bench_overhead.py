"""proxy.bench overhead: the fake upstream's payloads, scenario parsing, and smoke runs of the
whole benchmark (--quick; not timed: wall time and speed are not tested), on http through the
CLI and on https with its throwaway certificate."""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy import catalog, cli, imaging, verify
from proxy.bench import load, overhead, procs, upstream
from proxy.bench.load import Run
from proxy.bench.overhead import Scenario
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


@pytest.mark.parametrize(("text", "scenario"), [
    ("1.4MB:8", Scenario(1_400_000, 8)),
    ("2kb:1", Scenario(2_000, 1)),
    ("6MB", Scenario(6_000_000, 1)),
    ("5001:3", Scenario(5_000, 3)),
])
def test_scenarios_parse(text: str, scenario: Scenario) -> None:
    assert overhead.parse_scenario(text) == scenario


@pytest.mark.parametrize("text", ["big:2", "1.4MB:x", "8:1", "2KB:0"])
def test_bad_scenarios_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        overhead.parse_scenario(text)


def test_a_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "overhead", "--scenario", "huge"]) == 2
    assert "SIZE:CONCURRENCY" in capsys.readouterr().err


_NUMBER = r"(-?[\d.]+)"
_ROW = re.compile(rf"^(?P<payload>[\d.]+ [KM]?B)\s+(?P<conc>\d+)\s+{_NUMBER}\s+{_NUMBER}\s+"
                  rf"{_NUMBER}%\s+{_NUMBER} / {_NUMBER}\s+{_NUMBER} / {_NUMBER}\s+{_NUMBER}\s+"
                  rf"{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}$")


def check_rows(out: str, scenarios: tuple[Scenario, ...]) -> None:
    rows = {(m["payload"], int(m["conc"])): [float(x) for x in m.groups()[2:]]
            for m in map(_ROW.match, out.splitlines()) if m}
    expected = {(overhead.size_label(s.payload_chars), s.concurrency) for s in scenarios}
    assert set(rows) == expected, out
    for numbers in rows.values():
        direct_rps, proxied_rps, ratio, d50, d99, p50, p99, *_added, _rss, cpu = numbers
        assert min(direct_rps, proxied_rps, ratio, d50, d99, p50, p99) > 0, out
        assert d50 <= d99 and p50 <= p99 and all(map(math.isfinite, numbers))
        assert cpu >= 0  # RSS above idle may be ~0 (or just below) in a tiny run


def test_the_added_latency_pairs_each_proxied_run_with_the_direct_run_before_it() -> None:
    def run(p50_ms: float) -> Run:
        return Run(1.0, (p50_ms / 1000,) * 3, 0.5)

    # The machine is slow during the second pair only: each proxied run is 0.1 to 0.5 ms
    # behind the direct run next to it (median 0.2), but the medians of the runs taken apart
    # differ by 0.5 ms.
    row = overhead.Row(Scenario(2_000, 1), direct=(run(1.0), run(2.0), run(1.0)),
                       proxied=(run(1.5), run(2.1), run(1.2)),
                       relayed=(run(1.2), run(2.3), run(1.1)), idle_rss=0, peak_rss=(0, 0, 0),
                       proxy_cpu_s=(0.0, 0.0, 0.0))
    assert row.p50(row.proxied) - row.p50(row.direct) == pytest.approx(0.0005)
    assert row.added_p50_s == pytest.approx(0.0002)
    assert row.relay_added_p50_s == pytest.approx(0.0002)  # of 0.2, 0.3, 0.1
    assert row.over_relay_p50_s == pytest.approx(0.0001)  # of 0.3, -0.2, 0.1


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
    verdicts = [line for line in out.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert len(verdicts) == 4 and "wall time" in out


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
    chosen = overhead.options(quick=True, scenarios=["2KB:1", "1.4MB:2"], https=True)
    out = overhead.main(chosen)
    assert "upstream in its own process on https" in out
    check_rows(out, chosen.scenarios)


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_sigterm_stops_the_processes_the_benchmark_started() -> None:
    bench = subprocess.Popen([sys.executable, "-m", "proxy", "bench", "overhead", "--scenario",
                              "2KB:1", "--requests", "100000"],
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
