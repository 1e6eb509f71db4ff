"""`switchyard bench batch` as CI runs it: a smoke run on a very fast clock. The figures are the
benchmark's to judge, not this test's; it checks the run is whole and the report honest."""

from __future__ import annotations

import re
import subprocess
import sys


def test_a_small_batch_benchmark_runs_and_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "bench", "batch", "--items", "80",
         "--overhead-items", "40", "--time-scale", "0.005"],
        capture_output=True, text=True, timeout=300, check=True)
    report = done.stdout
    assert "interactive hosts only: 80/80 items succeeded" in report
    assert "PASS no host past its cap" in report
    assert re.search(r"throughput [\d.]+ items/s = [\d.]+% of the [\d.]+ items/s", report)
    batch_api = re.search(r"with the Gemini Batch API .*: 80/80 items, 80 of them in (\d+) "
                          r"upstream batches", report)
    # At this clock a group gathers for 25 ms, so how many groups 80 items make depends on the
    # machine's speed (2 or 3 here; 6 in a CI run beside two other test runs): the check is
    # that they go up grouped, not one by one.
    assert batch_api and int(batch_api.group(1)) <= 16, report
    assert re.search(r"\d+% less than all interactive", report)
    assert re.search(r"scheduler overhead: 40 items .* ms CPU per item", report)
    for line in report.splitlines():  # every host row: peak within its cap
        row = re.match(r"(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s", line)
        if row and row.group(1) != "host":
            assert int(row.group(3)) <= int(row.group(2)), line
