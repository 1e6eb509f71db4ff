"""bench routing's `pools` market (issue 22.1): a key pool's members are the market's routes,
each key is limited on its own, and the report says what the pool saved."""

from __future__ import annotations

import subprocess
import sys

from proxy.bench import market, pools


def test_a_pooled_backend_is_one_route_per_key_and_each_key_is_limited_alone() -> None:
    scene = pools.build(1, 10.0, 16.0, keys=3)
    names = [route.provider.name for route in market.routes(scene)]
    assert len(names) == 4 and names[-1] == "mid"
    assert all(name.startswith("cheap.") for name in names[:3])
    upstream = market.MarketUpstream(scene, lambda _: "closed")
    rps = int(pools.KEY_RPS)
    over = [upstream._over_limit("cheap.a", 5.0 + i * 0.01, pools.KEY_RPS)
            for i in range(rps + 1)]
    assert over == [False] * rps + [True]  # the key's own limit, within one second
    assert not upstream._over_limit("cheap.b", 5.1, pools.KEY_RPS)  # another key's is its own
    assert not upstream._over_limit("cheap.a", 6.5, pools.KEY_RPS)  # a second later: room again


def test_a_pool_of_keys_costs_less_than_one_key() -> None:
    one, pooled = pools.measure(1, 60.0, 16.0)
    assert (one.keys, pooled.keys) == (1, pools.POOL)
    assert one.requests == pooled.requests and one.delivered == one.requests
    assert pooled.cheap_share > one.cheap_share
    assert pooled.cost_per_image < one.cost_per_image


def test_the_report_prints_both_rows_and_the_saving() -> None:
    done = subprocess.run([sys.executable, "-m", "proxy", "bench", "routing", "--market",
                           "pools", "--duration", "30"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "  1 key " in done.stdout and f"  {pools.POOL} keys " in done.stdout
    assert f"A pool of {pools.POOL} keys: " in done.stdout and "with one key, " in done.stdout
