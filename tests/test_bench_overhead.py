"""proxy.bench overhead: the fake upstream's payloads, scenario parsing, and a smoke run of the
whole benchmark through the CLI (--quick; not timed: wall time and speed are not tested)."""

from __future__ import annotations

import base64
import math
import re

import pytest

from proxy import cli, imaging
from proxy.bench import overhead, upstream
from proxy.bench.overhead import Scenario


@pytest.mark.parametrize("chars", [44, 2_000, 1_400_000])
def test_the_payload_is_base64_of_a_1024_square_png(chars: int) -> None:
    text = upstream.png_base64(chars)
    assert len(text) == chars
    data = base64.b64decode(text, validate=True)
    assert imaging.sniff(data) == "png" and imaging.dimensions(data) == (1024, 1024)


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
                  rf"{_NUMBER}\s+{_NUMBER}$")


def test_a_quick_run_prints_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "overhead", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = {(m["payload"], int(m["conc"])): [float(x) for x in m.groups()[2:]]
            for m in map(_ROW.match, out.splitlines()) if m}
    expected = {(overhead.size_label(s.payload_chars), s.concurrency)
                for s in overhead.SCENARIOS}
    assert set(rows) == expected, out
    for numbers in rows.values():
        direct_rps, proxied_rps, ratio, d50, d99, p50, p99, _added, _rss, cpu = numbers
        assert min(direct_rps, proxied_rps, ratio, d50, d99, p50, p99) > 0, out
        assert d50 <= d99 and p50 <= p99 and all(map(math.isfinite, numbers))
        assert cpu >= 0  # RSS above idle may be ~0 (or just below) in a tiny run
    verdicts = [line for line in out.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert len(verdicts) == 4 and "wall time" in out
