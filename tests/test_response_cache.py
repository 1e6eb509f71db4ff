"""The response cache end to end through the official openai SDK, on the test catalog's
simulated hosts (wrapped to count their calls): a miss calls the host and keeps the answer, a
hit answers from the store with no call, two identical requests at once make one call, a
tenant never gets another tenant's image (unless the operator shares the cache), the store
stays within its bytes by dropping the least recently used, a hit is billed by the key's plan
with $0 upstream, and the ledger says which was which."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.billing.keys import KeyLimits
from tests.conftest import FIXTURES, Running, make_config, serve
from tests.fakes.sim_wrap import Wrapped, wrapped
from tests.test_jobs import wait_for

CACHE = {"cache": {"ttl_s": 3600}}


class Server:
    """A server on the test catalog whose sim-cheap ($0.02 at 1K, test-image's cheapest
    route) counts its calls."""

    def __init__(self, running: Running, host: Wrapped) -> None:
        self.running = running
        self.host = host

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.running.v1, api_key=key, max_retries=0)

    def generate(self, key: str, prompt: str, **extra: Any) -> Any:
        with self.sdk(key) as sdk:
            return sdk.images.with_raw_response.generate(
                model="test-image", prompt=prompt, extra_body=extra or None)

    def ledger(self, request_id: str) -> tuple[Any, ...]:
        with self.running.store() as store:
            rows = store.db.query("SELECT outcome, provider, n_delivered, billed_micros, "
                                  "upstream_micros, attempts FROM ledger WHERE request_id = ?",
                                  (request_id,))
        assert rows, f"no ledger row for {request_id}"
        return tuple(rows[0])


@contextlib.contextmanager
def started(tmp_path: Path, delay_s: float = 0.0, routes: Path | None = None,
            host: str = "sim-cheap", **settings: Any) -> Iterator[Server]:
    config = make_config(tmp_path / "data", **({"routes_dir": routes} if routes else {}),
                         **settings)
    hosts = wrapped(config, (host,), delay_s=delay_s)
    with serve(config, transports=hosts) as running:
        yield Server(running, hosts[host])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with started(tmp_path) as running:
        yield running


def images(raw: Any) -> list[str]:
    return [item["b64_json"] for item in raw.http_response.json()["data"]]


@pytest.mark.parametrize("tenants,second", [((None, None), "miss"),  # own tenants
                                             (("acme", "acme"), "hit")])
def test_the_cache_is_a_tenants_not_a_names(server: Server, tenants: tuple[Any, Any],
                                            second: str) -> None:
    """Two customers' keys may both be named "prod": a key made without a tenant is its own,
    where its name was its tenant and so the other's cache scope."""
    with server.running.store() as store:
        keys = [store.create_key("prod", tenant)[1] for tenant in tenants]
    answers = [server.generate(key, "acme's unreleased logo", **CACHE) for key in keys]
    assert [raw.headers["x-switchyard-cache"] for raw in answers] == ["miss", second]


def test_a_miss_calls_the_host_and_the_same_request_again_is_a_hit(server: Server) -> None:
    key = server.running.new_key()
    first = server.generate(key, "a lighthouse at dawn", **CACHE)
    second = server.generate(key, "a lighthouse at dawn", **CACHE)
    assert server.host.calls == 1, "the hit called no host"
    assert (first.headers["x-switchyard-cache"], second.headers["x-switchyard-cache"]) == \
        ("miss", "hit")
    assert images(first) == images(second)
    # Billed by the plan (pass-through: the price of the call it saved), $0 upstream.
    assert second.headers["x-switchyard-billed-usd"] == "0.020000"
    assert second.headers["x-switchyard-cost-usd"] == "0.000000"
    assert second.headers["x-switchyard-provider"] == "sim-cheap"  # who made the image
    assert server.ledger(first.headers["x-request-id"]) == \
        ("success", "sim-cheap", 1, 20_000, 20_000, 1)
    assert server.ledger(second.headers["x-request-id"]) == \
        ("cache_hit", "sim-cheap", 1, 20_000, 0, 0)


def test_what_is_not_the_same_request_misses(server: Server) -> None:
    key = server.running.new_key()
    server.generate(key, "a red fox", **CACHE)
    other = [server.generate(key, "a red fox!", **CACHE),
             server.generate(key, "a red fox", size="1024x1536", **CACHE),
             server.generate(key, "a red fox", output_format="jpeg", **CACHE),
             server.generate(key, "a red fox", seed=7, **CACHE)]
    assert [raw.headers["x-switchyard-cache"] for raw in other] == ["miss"] * 4
    assert server.host.calls == 5
    # How the answer is delivered is not part of the request's identity.
    link = server.generate(key, "a red fox", response_format="url", **CACHE)
    assert link.headers["x-switchyard-cache"] == "hit" and server.host.calls == 5


def test_two_identical_requests_at_once_make_one_upstream_call(tmp_path: Path) -> None:
    with started(tmp_path, delay_s=0.3) as server:
        key = server.running.new_key()

        async def both() -> list[Any]:
            async with openai.AsyncOpenAI(base_url=server.running.v1, api_key=key,
                                          max_retries=0) as sdk:
                return list(await asyncio.gather(*(
                    sdk.images.with_raw_response.generate(model="test-image", prompt="twins",
                                                          extra_body=CACHE)
                    for _ in range(2))))

        answers = asyncio.run(both())
        assert server.host.calls == 1
        assert sorted(raw.headers["x-switchyard-cache"] for raw in answers) == \
            ["coalesced", "miss"]
        assert images(answers[0]) == images(answers[1])
        outcomes = sorted(server.ledger(raw.headers["x-request-id"]) for raw in answers)
        assert outcomes == [("coalesced", "sim-cheap", 1, 20_000, 0, 0),
                            ("success", "sim-cheap", 1, 20_000, 20_000, 1)]


def test_a_seeded_request_is_cached_by_default_where_the_host_honours_seeds(
        server: Server) -> None:
    key = server.running.new_key()
    first = server.generate(key, "a seeded owl", seed=42)
    again = server.generate(key, "a seeded owl", seed=42)
    assert (first.headers["x-switchyard-cache"], again.headers["x-switchyard-cache"]) == \
        ("miss", "hit")
    plain = [server.generate(key, "an unseeded owl") for _ in range(2)]
    assert all("x-switchyard-cache" not in raw.headers for raw in plain)
    assert server.host.calls == 3
    off = server.generate(key, "a seeded owl", seed=42, cache={"ttl_s": 0})
    assert "x-switchyard-cache" not in off.headers and server.host.calls == 4


def test_a_key_may_turn_the_cache_on_and_a_request_off(server: Server) -> None:
    key = server.running.new_key("cached", KeyLimits(cache_ttl_s=600))
    server.generate(key, "a key's heron")
    assert server.generate(key, "a key's heron").headers["x-switchyard-cache"] == "hit"
    assert "x-switchyard-cache" not in server.generate(key, "a key's heron",
                                                       cache={"ttl_s": 0}).headers
    assert server.host.calls == 2


def test_a_tenant_never_gets_another_tenants_image(server: Server) -> None:
    alice = server.running.new_key("alice")
    bob = server.running.new_key("bob")
    alices_other = server.running.new_key("alice-2", None)
    with server.running.store() as store:  # a second key of alice's tenant
        store.db.execute("UPDATE api_keys SET tenant = (SELECT tenant FROM api_keys WHERE "
                         "name = 'alice') WHERE name = 'alice-2'")
    server.generate(alice, "a private map", **CACHE)
    assert server.generate(bob, "a private map", **CACHE).headers["x-switchyard-cache"] == \
        "miss"
    assert server.generate(alices_other, "a private map",
                           **CACHE).headers["x-switchyard-cache"] == "hit"
    assert server.host.calls == 2


def test_a_shared_cache_answers_every_tenant(tmp_path: Path) -> None:
    with started(tmp_path, cache_shared=True) as server:
        server.generate(server.running.new_key("alice"), "a public map", **CACHE)
        other = server.generate(server.running.new_key("bob"), "a public map", **CACHE)
        assert other.headers["x-switchyard-cache"] == "hit" and server.host.calls == 1


def test_the_store_keeps_within_its_bytes_dropping_the_least_recently_used(
        tmp_path: Path) -> None:
    # An entry here is about 23.5 kB (a 1K PNG's base64): two fit in 60 kB, three do not.
    with started(tmp_path, cache_max_bytes=60_000) as server:
        key = server.running.new_key()
        for prompt in ("a", "b"):
            server.generate(key, prompt, **CACHE)
        assert server.generate(key, "a", **CACHE).headers["x-switchyard-cache"] == "hit"
        server.generate(key, "c", **CACHE)  # pushes out b, used longest ago
        with server.running.store() as store:
            assert store.cache.total_bytes() <= 60_000
        assert server.generate(key, "a", **CACHE).headers["x-switchyard-cache"] == "hit"
        assert server.generate(key, "c", **CACHE).headers["x-switchyard-cache"] == "hit"
        assert server.generate(key, "b", **CACHE).headers["x-switchyard-cache"] == "miss"
        assert server.host.calls == 4


def test_a_hit_is_billed_by_the_keys_plan(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    shutil.copytree(FIXTURES / "routes", routes)
    (routes / "plans.toml").write_text(
        '[resale]\nmarkup = 0.5\ncache_hit_factor = 0.25\n')
    with started(tmp_path, routes=routes) as server:
        key = server.running.new_key("resale", KeyLimits(plan="resale"))
        miss = server.generate(key, "a billed crane", **CACHE)
        hit = server.generate(key, "a billed crane", **CACHE)
        assert miss.headers["x-switchyard-billed-usd"] == "0.030000"  # $0.02 + 50%
        assert hit.headers["x-switchyard-billed-usd"] == "0.007500"  # a quarter of that
        assert server.ledger(hit.headers["x-request-id"])[3:5] == (7_500, 0)
        with server.running.store() as store:
            (row,) = store.usage.report(["model"])
        assert (row.requests, row.succeeded, row.images) == (2, 2, 2)
        assert (row.billed_usd, row.upstream_usd) == (Decimal("0.0375"), Decimal("0.02"))


@pytest.mark.parametrize(("cache", "param"), [
    ({"ttl_s": -1}, "cache.ttl_s"),
    ({"ttl_s": "3600"}, "cache.ttl_s"),
    ({"ttl_s": 10**9}, "cache.ttl_s"),
    ({"ttl": 60}, "cache.ttl"),
    ("yes", "cache"),
])
def test_bad_cache_options_are_a_400_naming_the_parameter(
        server: Server, cache: Any, param: str) -> None:
    with server.sdk(server.running.new_key()) as sdk, \
            pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(model="test-image", prompt="x", extra_body={"cache": cache})
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert server.host.calls == 0


def test_a_leader_that_fails_fails_those_waiting_on_it(tmp_path: Path) -> None:
    """test-down's one host always fails: two identical requests at once make one call and
    both get its error, billed nothing."""
    with started(tmp_path, delay_s=0.3, host="sim-broken") as server:
        key = server.running.new_key()

        async def both() -> list[Any]:
            async with openai.AsyncOpenAI(base_url=server.running.v1, api_key=key,
                                          max_retries=0) as sdk:
                return list(await asyncio.gather(*(
                    sdk.images.generate(model="test-down", prompt="doomed", extra_body=CACHE)
                    for _ in range(2)), return_exceptions=True))

        outcomes = asyncio.run(both())
        assert all(isinstance(o, openai.APIStatusError) for o in outcomes), outcomes
        assert server.host.calls == 1
        with server.running.store() as store:
            rows = store.db.query("SELECT outcome, billed_micros FROM ledger")
        assert len(rows) == 2 and all(row[1] == 0 and row[0] != "success" for row in rows)


def test_a_stream_and_a_job_are_answered_from_the_cache(server: Server) -> None:
    key = server.running.new_key("cached", KeyLimits(cache_ttl_s=600))
    server.generate(key, "a streamed stork")
    with server.sdk(key) as sdk:
        events = list(sdk.images.generate(model="test-image", prompt="a streamed stork",
                                          stream=True))
    assert len(events) == 1 and events[0].model_extra is not None
    said = events[0].model_extra["switchyard"]
    assert said["cache"] == "hit" and said["billed_usd"] == "0.020000"
    job = httpx.post(f"{server.running.v1}/images/generations", json={
        "model": "test-image", "prompt": "a streamed stork"}, headers={
        "authorization": f"Bearer {key}", "prefer": "respond-async"}).json()
    done = wait_for(server.running, key, job["id"])
    assert done["status"] == "succeeded"
    assert server.ledger(job["id"])[0] == "cache_hit" and server.host.calls == 1
