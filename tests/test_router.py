"""proxy.routing.router against scripted upstreams: failover, breaker, Retry-After, hedging,
backpressure, constraints and deadlines, with the real flows and health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest

from proxy.catalog import Model, Route
from proxy.config import Secret
from proxy.domain import Geometry, ImageRequest, Policy, Served
from proxy.failures import Failure, Kind
from proxy.routing import run as run_module
from proxy.routing.health import Health, Settings
from proxy.routing.planning import NoRoute
from proxy.routing.router import Router, RoutesFailed
from proxy.routing.slots import Slots
from tests.fakes import scripted
from tests.fakes.scripted import OK, Scripted, Step

T = TypeVar("T")

CHEAP = scripted.route("cheap", "0.02", latency=0.1)
MID = scripted.route("mid", "0.04", latency=0.1)
DEAR = scripted.route("dear", "0.08", latency=0.05)
ROUTES = (CHEAP, MID, DEAR)


def request(n: int = 1, policy: Policy | None = None) -> ImageRequest:
    return ImageRequest(kind="generate", model="m", prompt="a lighthouse", n=n,
                        geometry=Geometry("1:1", "1K", None, "default"), output_format="png",
                        response_format="b64_json", policy=policy or Policy())


class Later:
    """The real clock, moved forward on demand: health sees time pass that the loop did not."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def make_router(upstream: Scripted, routes: Sequence[Route] = ROUTES, timeout_s: float = 10.0,
                slot_wait_s: float = 0.05, clock: Later | None = None) -> Router:
    clients = {r.provider.name: httpx.AsyncClient(transport=upstream) for r in routes}
    return Router({"scripted": scripted.ADAPTER}, clients, timeout_s,
                  health=Health(routes, Settings(), clock or Later()),
                  slots=Slots((r.provider for r in routes), wait_s=slot_wait_s))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def serve(router: Router, model: Model, req: ImageRequest | None = None) -> Served:
    return await router.serve(model, req or request())


async def failure(router: Router, model: Model, req: ImageRequest | None = None
                  ) -> RoutesFailed:
    with pytest.raises(RoutesFailed) as caught:
        await router.serve(model, req or request())
    return caught.value


def log(served_or_failed: Served | RoutesFailed) -> list[str]:
    return [f"{a.provider}={a.failure or 'ok'}" for a in served_or_failed.attempts]


def test_cheapest_healthy_route_serves() -> None:
    upstream = Scripted()
    served = run(serve(make_router(upstream), scripted.model(ROUTES)))
    assert served.provider == "cheap" and log(served) == ["cheap=ok"]
    assert served.cost_usd == Decimal("0.02") and served.quote_usd == Decimal("0.02")
    assert served.strategy == "cheapest"


@pytest.mark.parametrize(("status", "kind"), [(503, "overloaded"), (500, "upstream_broken"),
                                              (429, "rate_limited"), (504, "timeout")])
def test_retryable_failures_move_to_the_next_route(status: int, kind: str) -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(status))
    served = run(serve(make_router(upstream), scripted.model(ROUTES)))
    assert served.provider == "mid" and log(served) == [f"cheap={kind}", "mid=ok"]


def test_the_clients_failures_go_straight_back() -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(400))
    failed = run(failure(make_router(upstream), scripted.model(ROUTES)))
    assert failed.failure.kind is Kind.BAD_REQUEST and log(failed) == ["cheap=bad_request"]
    assert upstream.calls["mid"] == 0


def test_a_refused_credential_fails_over_and_rests_its_route() -> None:
    # Switchyard's key, not the client's request, is wrong: the next route serves it, and
    # the refused route is out for a while (issue 22.1: a key pool's other keys go on).
    upstream = Scripted()
    upstream.script("cheap", Step(401))
    routes = (keyed(CHEAP), MID, DEAR)
    router = make_router(upstream, routes)
    served = run(serve(router, scripted.model(routes)))
    assert served.provider == "mid" and log(served) == ["cheap=auth", "mid=ok"]
    snap = router.health.of(routes[0]).snapshot("1K")
    assert snap.refused and not snap.available
    assert run(serve(router, scripted.model(routes))).provider == "mid"
    assert upstream.calls["cheap"] == 1


def keyed(route: Route) -> Route:
    """The route with a key of its own (a refused one rests long; a token command's not)."""
    return replace(route, provider=replace(route.provider, key=Secret("sk-test")))


def test_every_route_failing_returns_the_last_failure() -> None:
    upstream = Scripted(default=Step(503))
    failed = run(failure(make_router(upstream), scripted.model(ROUTES)))
    assert failed.failure.kind is Kind.OVERLOADED
    assert log(failed) == ["cheap=overloaded", "mid=overloaded", "dear=overloaded"]


def test_a_broken_route_is_avoided_after_five_failures_and_returns_after_recovery() -> None:
    upstream = Scripted()
    upstream.script("cheap", *[Step(503)] * 5)
    clock = Later()
    router = make_router(upstream, clock=clock)
    model = scripted.model(ROUTES)

    async def go() -> list[str]:
        providers = [(await serve(router, model)).provider for _ in range(8)]
        assert upstream.calls["cheap"] == 5, "the open breaker keeps traffic away"
        # Recovered: after the cooldown one probe goes through and closes the breaker.
        clock.offset += Settings().cooldown_s + 0.1
        providers += [(await serve(router, model)).provider for _ in range(2)]
        return providers

    providers = run(go())
    assert providers[:5] == ["mid"] * 5 and providers[5:8] == ["mid"] * 3
    assert providers[8:] == ["cheap", "cheap"]


def test_retry_after_keeps_a_route_resting() -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(429, retry_after="30"))
    router = make_router(upstream)

    async def go() -> list[str]:
        return [(await serve(router, scripted.model(ROUTES))).provider for _ in range(3)]

    assert run(go()) == ["mid", "mid", "mid"]
    assert upstream.calls["cheap"] == 1


def test_a_hedge_starts_past_the_p95_and_the_first_image_wins() -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=3.0))  # p95 prior: 1.5 x 0.1 s
    router = make_router(upstream)
    started = time.monotonic()
    served = run(serve(router, scripted.model((CHEAP, MID), "fastest", hedge=True)))
    assert time.monotonic() - started < 0.5, "hedged at the p97, not rescued at the stall"
    assert served.provider == "mid"
    assert log(served) == ["mid=ok", "cheap=hedged"]
    assert upstream.cancelled["cheap"] == 1, "the losing attempt is cancelled"
    assert served.hedge_cost_usd == Decimal("0.02"), "what it started is counted honestly"
    assert served.cost_usd == Decimal("0.04")


def test_no_hedge_goes_to_a_route_whose_breaker_is_open() -> None:
    # A hedge is a bet on a healthy route; an open breaker is a failover's last resort only.
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=0.4))
    router = make_router(upstream, (CHEAP, MID))
    mid = router.health.of(MID)
    for _ in range(5):
        mid.end(mid.begin(), "1K", Failure(Kind.UPSTREAM_BROKEN, "down"))
    served = run(serve(router, scripted.model((CHEAP, MID), hedge=True)))
    assert served.provider == "cheap" and upstream.calls["mid"] == 0
    assert log(served) == ["cheap=ok"]


def test_a_stale_route_that_could_lead_is_probed_in_a_race_with_the_leader() -> None:
    # Issue 20.2/20.3: a probe is no unlucky client's wait. `fastest`: swift was slow (its
    # EWMA says so) and has had no traffic since; it could lead on its catalog figure, so a
    # request probes it, and the leader starts at once beside it.
    swift = scripted.route("swift", "0.04", latency=0.01)
    steady = scripted.route("steady", "0.04", latency=0.3)
    clock = Later()
    upstream = Scripted()
    router = make_router(upstream, (swift, steady), clock=clock)
    health = router.health.of(swift)
    for _ in range(5):
        token = health.begin()
        clock.offset += 2.0  # slow
        health.end(token, "1K", None)
    clock.offset += 60  # and no outcome since
    model = scripted.model((swift, steady), strategy="fastest")

    async def until_probed() -> tuple[list[list[str]], float]:
        """Requests until one probes swift (within the probe share: 1 in 20)."""
        logs = []
        for _ in range(25):
            started = time.monotonic()
            served = await serve(router, model)
            logs.append(log(served))
            if len(served.attempts) > 1 or served.provider == "swift":
                return logs, time.monotonic() - started
        return logs, 0.0

    upstream.script("steady", *[Step(delay_s=0.05)] * 60)
    upstream.script("swift", *[Step(delay_s=2.0)] * 30)  # still slow
    logs, seconds = run(until_probed())
    assert logs[:-1] == [["steady=ok"]] * (len(logs) - 1)
    assert logs[-1] == ["steady=ok", "swift=hedged"]
    assert seconds < 1.0, "the client did not wait for the probe"
    # Recovered: the next probe wins its race, and one fast sample puts swift back first.
    upstream.scripts["swift"].clear()  # answers at once from now on
    clock.offset += 60
    logs, _ = run(until_probed())
    assert logs[-1][0] == "swift=ok"  # (steady was cancelled, or never needed to start)
    assert run(serve(router, model)).provider == "swift"


def test_no_hedge_that_does_not_pay_for_itself() -> None:
    # Issue 22.5: under cheapest, mid is as fast as cheap: a hedge would buy a second image
    # for no expected time saved. The slow call is left alone (below its stall time).
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=0.5))
    served = run(serve(make_router(upstream), scripted.model(ROUTES, hedge=True)))
    assert log(served) == ["cheap=ok"] and upstream.calls["mid"] == 0


def test_a_slow_call_is_not_ended_for_a_route_that_cannot_take_over() -> None:
    # Review: mid's key was refused (it rests five minutes); cheap's call, slower than its
    # stall time (1 s here), must not be ended to hand the request to mid.
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=1.4))
    routes = (CHEAP, keyed(MID))
    router = make_router(upstream, routes)
    mid = router.health.of(routes[1])
    mid.end(mid.begin(), "1K", Failure(Kind.AUTH, "refused"))
    served = run(serve(router, scripted.model(routes)))
    assert served.provider == "cheap" and log(served) == ["cheap=ok"]
    assert upstream.calls["mid"] == 0


def test_no_hedge_unless_asked() -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=0.4))
    served = run(serve(make_router(upstream), scripted.model(ROUTES)))
    assert served.provider == "cheap" and upstream.calls["mid"] == 0


def test_the_request_can_ask_for_a_hedge() -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(delay_s=3.0))
    served = run(serve(make_router(upstream), scripted.model(ROUTES),
                       request(policy=Policy(hedge=True))))
    assert served.provider == "mid"


def test_a_full_provider_sends_the_next_request_to_the_next_route() -> None:
    upstream = Scripted()
    cheap = scripted.route("cheap", "0.02", latency=5.0, max_in_flight=1)
    routes = (cheap, MID)
    upstream.script("cheap", Step(delay_s=0.3))
    router = make_router(upstream, routes)

    async def go() -> list[str]:
        served = await asyncio.gather(*(serve(router, scripted.model(routes))
                                        for _ in range(2)))
        return sorted(s.provider for s in served)

    assert run(go()) == ["cheap", "mid"]


def test_every_provider_full_is_a_503_with_retry_after() -> None:
    upstream = Scripted(default=Step(delay_s=0.3))
    routes = (scripted.route("a", "0.02", max_in_flight=1),
              scripted.route("b", "0.03", max_in_flight=1))
    router = make_router(upstream, routes)

    async def go() -> list[Served | BaseException]:
        return await asyncio.gather(*(serve(router, scripted.model(routes)) for _ in range(3)),
                                    return_exceptions=True)

    outcomes = run(go())
    refused = [o for o in outcomes if isinstance(o, RoutesFailed)]
    assert len(refused) == 1 and len(outcomes) - len(refused) == 2
    assert refused[0].failure.kind is Kind.OVERLOADED
    assert refused[0].failure.retry_after_s == 1.0 and refused[0].attempts == ()


@pytest.mark.parametrize(("policy", "provider"), [
    (Policy(strategy="fastest"), "dear"),
    (Policy(strategy="ordered"), "cheap"),
    (Policy(only=frozenset({"mid", "dear"})), "mid"),
    (Policy(ignore=frozenset({"cheap"})), "mid"),
    (Policy(max_price=Decimal("0.05"), strategy="fastest"), "cheap"),
])
def test_the_request_policy_steers_the_choice(policy: Policy, provider: str) -> None:
    served = run(serve(make_router(Scripted()), scripted.model(ROUTES),
                       request(policy=policy)))
    assert served.provider == provider
    assert served.strategy == (policy.strategy or "cheapest")


def test_an_unmet_constraint_is_a_no_route_naming_it() -> None:
    with pytest.raises(NoRoute) as caught:
        run(serve(make_router(Scripted()), scripted.model(ROUTES),
                  request(policy=Policy(max_price=Decimal("0.01")))))
    assert caught.value.param == "route.max_price"


def test_a_slow_upstream_ends_at_the_deadline() -> None:
    upstream = Scripted(default=Step(delay_s=5.0))
    failed = run(failure(make_router(upstream, (CHEAP,), timeout_s=0.3), scripted.model((CHEAP,))))
    assert failed.failure.kind is Kind.TIMEOUT


def test_a_flow_that_outlives_the_deadline_is_given_up_without_evidence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The backstop past the request's deadline (and the grace) ends an attempt whose flow
    never ended itself: a timeout for the client, no judgement on the route, slot and
    in-flight count given back."""
    monkeypatch.setattr(run_module, "DEADLINE_GRACE_S", 0.05)
    router = make_router(Scripted(), (CHEAP,), timeout_s=0.1)
    monkeypatch.setattr(router, "_generate",
                        lambda route, req, deadline, submits=None: asyncio.sleep(60))
    failed = run(failure(router, scripted.model((CHEAP,))))
    snapshot = router.health.of(CHEAP).snapshot("1K")
    assert failed.failure.kind is Kind.TIMEOUT and failed.attempts == ()
    assert snapshot.in_flight == 0 and snapshot.samples == 0
    assert router._slots.in_use(CHEAP.provider) == 0


def test_an_attempt_that_breaks_unexpectedly_leaves_no_attempt_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(route: Route, req: ImageRequest, deadline: float,
                     submits: object = None) -> None:
        raise TimeoutError("not the router's own timeout")

    router = make_router(Scripted(), (CHEAP,))
    monkeypatch.setattr(router, "_generate", broken)
    with pytest.raises(TimeoutError):
        run(serve(router, scripted.model((CHEAP,))))
    assert router.health.of(CHEAP).snapshot("1K").in_flight == 0
    assert router._slots.in_use(CHEAP.provider) == 0


def test_n_images_are_billed_as_delivered() -> None:
    served = run(serve(make_router(Scripted()), scripted.model(ROUTES), request(n=3)))
    assert len(served.result.images) == 3 and served.cost_usd == Decimal("0.06")


def test_slots_are_released_after_every_outcome() -> None:
    upstream = Scripted()
    upstream.script("cheap", Step(503), OK, Step(delay_s=3.0))
    router = make_router(upstream)
    model = scripted.model(ROUTES, hedge=True)

    async def go() -> None:
        for _ in range(3):
            await serve(router, model)
        await asyncio.sleep(0.05)  # let cancelled attempts unwind
        assert all(router._slots.in_use(r.provider) == 0 for r in ROUTES)

    run(go())
