"""`switchyard bench batch-create`: which requests count as "during" a creation, and a tiny run
through the CLI against a real `serve` of a given checkout. Speed is the benchmark's to judge,
never this test's: the report must be whole, with real figures where figures go.

Without hey the run skips with the reason, except in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.bench.batch_create import in_window, tree_cpu_s

ROOT = Path(__file__).resolve().parent.parent
FIGURES = r"p50 +[\d.]+ +p99 +[\d.]+ +max +[\d.]+ ms +\((\d+) ok, (\d+) failed\)"


def test_during_means_in_flight_at_some_moment_of_the_creation() -> None:
    rows = [(0.0, 0.5, "200"),   # over before it began
            (0.5, 1.0, "200"),   # sent before, answered during
            (1.2, 0.1, "200"),   # wholly during
            (1.9, 0.5, "503"),   # sent during, answered after
            (0.9, 2.0, "200"),   # spans it
            (2.0, 0.1, "200")]   # sent once it had ended
    assert in_window(rows, 1.0, 2.0) == rows[1:5]


def test_a_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    if shutil.which("hey") is None:
        reason = "hey (https://github.com/rakyll/hey) is not installed: apt-get install hey"
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI=true and {reason} (.ci/run installs it)")
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "bench", "batch-create", "--lines", "3000", "--rounds",
         "1", "--seconds", "0.5", "--workers", "4", "--rate", "50", "--code", str(ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    baseline = re.search(rf"round 1 +{ROOT.name}: baseline +{FIGURES}", report)
    during = re.search(rf"during +{FIGURES}; created in [\d.]+ s, [\d.]+ cores above", report)
    control = re.search(rf"control +{FIGURES}", report)
    assert baseline and during and control, report
    assert int(baseline[1]) > 0 and int(during[1]) > 0 and int(control[1]) > 0
    assert baseline[2] == during[2] == control[2] == "0", report
    assert re.search(rf"{ROOT.name}: +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+ +[\d.]+x +[\d.]+ s",
                     report), report


def test_the_cpu_of_a_server_counts_its_worker_processes() -> None:
    """The control burns what the creation took, and the checking runs in a child of serve."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + "
                              "0.4\nwhile time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        before = tree_cpu_s(os.getpid())
        deadline = time.monotonic() + 20
        while tree_cpu_s(os.getpid()) - before < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_s(os.getpid()) - before >= 0.3  # the child's burn, seen live
    finally:
        child.kill()
        child.wait()
