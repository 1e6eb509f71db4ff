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
from pathlib import Path

import pytest

from proxy.bench.batch_create import in_window

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
    during = re.search(rf"during +{FIGURES}; created in [\d.]+ s", report)
    assert baseline and during, report
    assert int(baseline[1]) > 0 and int(during[1]) > 0 and baseline[2] == during[2] == "0"
    assert re.search(rf"{ROOT.name}: +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+ s", report), report
