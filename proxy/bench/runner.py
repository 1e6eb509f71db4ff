"""Run the real Router through a scenario in virtual time: one fresh router per strategy.

Requests start at their arrival times and run concurrently, exactly as the proxy would serve
them: real planning, health, breaker, slots and flows; only the upstreams and the clock are
simulated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from proxy.bench import market
from proxy.bench.clock import run_virtual
from proxy.bench.scenario import Delivery, Scenario
from proxy.catalog import Model
from proxy.domain import Geometry, ImageRequest
from proxy.routing.health import Health, Settings
from proxy.routing.router import Router, RoutesFailed
from proxy.routing.slots import Slots
from proxy.upstream.clients import build_clients


@dataclass(frozen=True, slots=True)
class RouterRun:
    """One strategy's run: every request's outcome and every call the market saw."""

    name: str
    deliveries: tuple[Delivery, ...]
    calls: tuple[market.Call, ...]
    peak_in_flight: dict[str, int]


def run(scenario: Scenario, strategy: str, hedge: bool = False,
        settings: Settings | None = None) -> RouterRun:
    """The scenario through a fresh Router with this strategy, on a fresh virtual clock."""
    return run_virtual(_run(scenario, strategy, hedge, settings or Settings()))


async def _run(scenario: Scenario, strategy: str, hedge: bool,
               settings: Settings) -> RouterRun:
    loop = asyncio.get_running_loop()
    model = market.model(scenario, strategy, hedge)
    health = Health(model.routes, settings, clock=loop.time)
    by_name = {r.provider.name: r for r in model.routes}
    upstream = market.MarketUpstream(scenario, lambda name: health.of(by_name[name]).state)
    providers = tuple(r.provider for r in model.routes)
    clients = build_clients(providers, {"market": market.ADAPTER}, 1.0,
                            transports=dict.fromkeys(by_name, upstream))
    router = Router({"market": market.ADAPTER}, clients, scenario.deadline_s, clock=loop.time,
                    health=health, slots=Slots(providers))
    tasks = []
    for number, arrival in enumerate(scenario.arrivals):
        await asyncio.sleep(max(0.0, arrival - loop.time()))
        tasks.append(asyncio.create_task(_serve(router, model, number, arrival)))
    deliveries = await asyncio.gather(*tasks)
    for client in clients.values():
        await client.aclose()
    name = f"{strategy}+hedge" if hedge else strategy
    return RouterRun(name, tuple(deliveries), tuple(upstream.calls), upstream.peak_in_flight)


async def _serve(router: Router, model: Model, number: int, arrival: float) -> Delivery:
    loop = asyncio.get_running_loop()
    try:
        served = await router.serve(model, _request(number))
    except RoutesFailed as failed:
        return Delivery(number, arrival, None, loop.time() - arrival, Decimal(0), 0,
                        tuple(a.provider for a in failed.attempts if a.failure != "hedged"))
    # Lost hedges were started, and hosts bill work they started.
    return Delivery(number, arrival, served.provider, loop.time() - arrival,
                    served.cost_usd + served.hedge_cost_usd, len(served.result.images),
                    tuple(a.provider for a in served.attempts))


def _request(number: int) -> ImageRequest:
    """Request `number` of the scenario; its number rides in the seed to the market."""
    return ImageRequest(kind="generate", model=market.MODEL, prompt="a lighthouse at dusk",
                        n=1, geometry=Geometry("1:1", market.TIER, None, "default"),
                        output_format="png", response_format="b64_json", seed=number)
