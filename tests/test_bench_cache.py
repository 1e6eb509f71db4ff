"""`switchyard bench cache` runs its workload both ways and prints what the cache saved (a
figure to read, not a timed check)."""

from __future__ import annotations

from proxy.bench import cache


def test_the_benchmark_prints_fewer_calls_and_cheaper_images_with_the_cache() -> None:
    printed = cache.main(requests=40, distinct=6, time_scale=0.0)
    lines = printed.splitlines()
    off = lines[2].split()
    on = lines[3].split()
    assert off[:3] == ["cache", "off", "40"] and off[3] == "40"  # every request a call
    assert on[:3] == ["cache", "on", "40"] and int(on[3]) <= 6  # at most one per pair
    assert float(on[6]) < float(off[6])  # upstream $ per image
    assert "lower with the cache" in lines[4]
