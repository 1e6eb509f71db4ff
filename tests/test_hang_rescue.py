"""A host that hangs, then recovers (issue 20, points 1-3), through a real `switchyard serve`
in front of two hosts on real sockets, driven by the official `openai` client.

`cheap-host` ($0.01) answers in 20 ms until the test makes it hang (its calls then never
answer within the 10 s timeout); `spare-host` ($0.02) always answers. `cheapest` sends
everything to cheap-host while it answers. Without hedging, a request whose call hangs is
moved to spare-host at the route's stall time (about a second), not after 10 s; with hedging,
the calls that lose their hedge count against cheap-host, which leaves hedged traffic after
a handful. Either way its breaker's probes are bounded, and once it answers again it is back
within seconds. The ledger shows what each hedge cost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from proxy.billing.store import Store
from tests.fakes.counting_host import CountingHost, counting_host
from tests.serving import Served

MODEL = "hang-image"
KEY_ENV = "HANG_TEST_KEY"
QUICK_S = 0.02
HANG_S = 60.0  # longer than the 10 s timeout: a call started now never answers
TIMEOUT_S = 10


def _catalog(cheap: CountingHost, spare: CountingHost) -> dict[str, str]:
    providers = "".join(f"""
[{name}]
protocol = "openai_images"
base_url = "http://127.0.0.1:{host.port}/v1"
key_env = "{KEY_ENV}"
timeout_s = {TIMEOUT_S}
""" for name, host in (("cheap-host", cheap), ("spare-host", spare)))
    model = f"""name = "{MODEL}"
owned_by = "tests"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1"]

[[routes]]
provider = "cheap-host"
upstream_model = "m"
price.per_image = {{ "1K" = 0.01 }}
options.sizes = ["1024x1024"]
typical_latency_s = 0.05

[[routes]]
provider = "spare-host"
upstream_model = "m"
price.per_image = {{ "1K" = 0.02 }}
options.sizes = ["1024x1024"]
typical_latency_s = 0.05
"""
    return {"providers.toml": providers, f"models/{MODEL}.toml": model}


@dataclass(frozen=True, slots=True)
class Answer:
    provider: str
    seconds: float
    log: str  # x-switchyard-attempt-log
    hedge_cost: str | None
    request_id: str


@dataclass
class Setup:
    served: Served
    cheap: CountingHost
    sdk: openai.OpenAI
    database: Path

    def ask(self, hedge: bool = False) -> Answer:
        extra: dict[str, Any] = {"route": {"hedge": True}} if hedge else {}
        started = time.monotonic()
        raw = self.sdk.images.with_raw_response.generate(model=MODEL, prompt="a lighthouse",
                                                        extra_body=extra)
        raw.parse()
        h = raw.headers
        return Answer(h["x-switchyard-provider"], time.monotonic() - started,
                      h["x-switchyard-attempt-log"], h.get("x-switchyard-hedge-cost-usd"),
                      h["x-request-id"])

    def ask_many(self, count: int, hedge: bool = False) -> list[Answer]:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self.ask(hedge), range(count)))

    def upstream_micros(self, request_id: str) -> int:
        with Store(self.database) as store:
            entry = store.money.entry(request_id)
        assert entry is not None, request_id
        return entry.upstream_micros

    def back_after(self, hedge: bool) -> tuple[float, list[Answer]]:
        """cheap-host answers again: seconds until it served a request, asking every 0.2 s,
        and the five answers after that one."""
        self.cheap.delay_s = QUICK_S
        recovered = time.monotonic()
        while time.monotonic() - recovered < 20:
            if self.ask(hedge).provider == "cheap-host":
                return time.monotonic() - recovered, [self.ask(hedge) for _ in range(5)]
            time.sleep(0.2)
        raise AssertionError("cheap-host never got traffic back within 20 s")


@contextlib.contextmanager
def started(tmp_path: Path) -> Iterator[Setup]:
    with counting_host() as cheap, counting_host() as spare:
        cheap.delay_s = spare.delay_s = QUICK_S
        routes = tmp_path / "routes"
        for name, text in _catalog(cheap, spare).items():
            (routes / name).parent.mkdir(parents=True, exist_ok=True)
            (routes / name).write_text(text)
        env = {"SWITCHYARD_ROUTES_DIR": str(routes), KEY_ENV: "k"}
        with Served(tmp_path / "data", env=env) as served:
            database = tmp_path / "data" / "switchyard.db"
            with Store(database) as store:
                key = store.create_key("hang")[1]
            sdk = openai.OpenAI(base_url=f"{served.base}/v1", api_key=key, max_retries=0,
                                timeout=30)
            yield Setup(served, cheap, sdk, database)


def test_a_hung_call_moves_to_the_next_route_and_the_host_comes_back(tmp_path: Path) -> None:
    with started(tmp_path) as setup:
        assert {setup.ask().provider for _ in range(10)} == {"cheap-host"}
        setup.cheap.delay_s = HANG_S
        hung = setup.ask_many(6)
        print("while cheap-host hangs:", [(a.provider, round(a.seconds, 2)) for a in hung])
        # Each was moved at the route's stall time (max(1 s, 2 x p95)), not after 10 s.
        assert all(a.provider == "spare-host" for a in hung)
        assert max(a.seconds for a in hung) < 3.0
        assert all(a.log.startswith("cheap-host=timeout") for a in hung)
        # The moved call is no image, so no charge: each paid spare-host's price alone.
        assert {setup.upstream_micros(a.request_id) for a in hung} == {20_000}
        # Its breaker is open: the next requests go straight to spare-host, but for a probe
        # every few seconds, bounded like the moves: nobody waits the 10 s timeout.
        later = []
        until = time.monotonic() + 7
        while time.monotonic() < until:
            later.append(setup.ask())
            time.sleep(0.2)
        probes = [a for a in later if a.log != "spare-host=ok"]
        print("probes while it hangs:", [(a.log, round(a.seconds, 2)) for a in probes])
        assert all(a.provider == "spare-host" for a in later)
        assert 1 <= len(probes) <= 2  # one per cooldown (4 s, then 6 s)
        assert all(a.log == "cheap-host=timeout, spare-host=ok" for a in probes)
        assert max(a.seconds for a in later) < 3.0
        seconds, after = setup.back_after(hedge=False)
        print(f"cheap-host back {seconds:.1f} s after it recovered")
        assert seconds < 10.0
        assert [a.provider for a in after] == ["cheap-host"] * 5


def test_hedges_lost_by_a_hung_host_take_it_out_of_hedged_traffic(tmp_path: Path) -> None:
    with started(tmp_path) as setup:
        assert {setup.ask(hedge=True).provider for _ in range(10)} == {"cheap-host"}
        setup.cheap.delay_s = HANG_S
        hung_at = time.monotonic()
        calls_before = setup.cheap.calls
        answers = [setup.ask(hedge=True) for _ in range(15)]
        print("hedged while cheap-host hangs:",
              [(a.provider, round(a.seconds, 2), a.hedge_cost) for a in answers])
        assert all(a.provider == "spare-host" for a in answers)
        hedged = [a for a in answers if a.hedge_cost is not None]
        # Each lost hedge counted against cheap-host: its breaker opened after five, and
        # the requests after those paid no hedge.
        assert 1 <= len(hedged) <= 5
        assert all(a.hedge_cost is None for a in answers[len(hedged):])
        assert time.monotonic() - hung_at < 5 + 15 * 0.5
        assert setup.cheap.calls - calls_before <= 6  # the lost hedges, and a probe at most
        # The ledger: a lost hedge is what the hung host may bill for the call it started.
        for a in answers:
            expected = 30_000 if a.hedge_cost == "0.010000" else 20_000
            assert setup.upstream_micros(a.request_id) == expected, a
        seconds, after = setup.back_after(hedge=True)
        print(f"cheap-host back {seconds:.1f} s after it recovered")
        assert seconds < 10.0
        assert [a.provider for a in after] == ["cheap-host"] * 5
