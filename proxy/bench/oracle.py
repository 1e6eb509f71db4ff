"""Yardsticks for the router, computed from the scenario alone: oracles and single providers.

An oracle knows every backend's true state at every instant (the future included) but not the
dice: at a request's arrival it ranks the backends by their true state, then walks that list
with the router's failover rule (a failed call moves to the next backend) on the same dice the
router's calls got. What it achieves is the best a router can do without foreseeing each
individual call's luck. A single-provider baseline sends everything to one backend, no
failover.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from proxy.bench.scenario import Backend, Delivery, Scenario, State, answer

# How an oracle orders the backends at one instant: a sort key per backend and its state.
Ranking = Callable[[Backend, State], tuple[float, ...]]


def by_cost(backend: Backend, state: State) -> tuple[float, ...]:
    """Cheapest first; down or hung last. Failed calls are free, so error rates do not change
    the cheapest choice, only what it costs in time."""
    return (not state.up, float(backend.price), state.median_s)


def by_latency(backend: Backend, state: State) -> tuple[float, ...]:
    """Lowest true median latency first; down or hung last."""
    return (not state.up, state.median_s, float(backend.price))


def oracle(scenario: Scenario, ranking: Ranking) -> tuple[Delivery, ...]:
    """Every request walked down the backends in the order `ranking` gives at its arrival."""
    return tuple(walk(scenario, number, order(scenario, ranking, arrival))
                 for number, arrival in enumerate(scenario.arrivals))


def order(scenario: Scenario, ranking: Ranking, t: float) -> list[int]:
    """The backends' indices, best first by their true state at `t`."""
    keys = [ranking(b, b.state(t)) for b in scenario.backends]
    return sorted(range(len(keys)), key=keys.__getitem__)


def single(scenario: Scenario, name: str) -> tuple[Delivery, ...]:
    """Every request sent to one backend only."""
    index = next(i for i, b in enumerate(scenario.backends) if b.name == name)
    return tuple(walk(scenario, number, [index]) for number in range(len(scenario.arrivals)))


def walk(scenario: Scenario, number: int, order: Sequence[int]) -> Delivery:
    """Request `number` tried on the backends in `order` (indices) until one delivers, each
    call starting when the last one failed, all within the request deadline. A call slower
    than the provider's read timeout (a hung backend's, always) fails at that timeout."""
    arrival = scenario.arrivals[number]
    deadline = arrival + scenario.deadline_s
    read_timeout = scenario.read_timeout_s()
    now = arrival
    tried: list[str] = []
    for index in order:
        backend = scenario.backends[index]
        outcome = answer(backend, backend.state(now), scenario.dice[number][index])
        if outcome.seconds > read_timeout:
            now += read_timeout
            tried.append(backend.name)
            if now >= deadline:
                return Delivery(number, arrival, None, deadline - arrival, Decimal(0), 0,
                                tuple(tried))
            continue
        if now + outcome.seconds > deadline:
            tried.append(backend.name)
            return Delivery(number, arrival, None, deadline - arrival, Decimal(0), 0,
                            tuple(tried))
        now += outcome.seconds
        tried.append(backend.name)
        if outcome.status == 200:
            return Delivery(number, arrival, backend.name, now - arrival, backend.price, 1,
                            tuple(tried))
    return Delivery(number, arrival, None, now - arrival, Decimal(0), 0, tuple(tried))
