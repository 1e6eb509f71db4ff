"""The caller's routing choice: a `route` object in the body, the x-switchyard-strategy header,
or a model-name suffix; the first one that says something wins.

`route` reaches us from the OpenAI SDK through `extra_body`, as a JSON object (or, in a
multipart edit, as a form field holding that object's JSON text):
`{"strategy": "fastest", "max_price": 0.08, "max_latency_s": 30, "only": [...],
"ignore": [...], "hedge": true, "lane": "discount"}`.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from proxy.api.errors import bad_request
from proxy.catalog import STRATEGIES
from proxy.domain import Policy

HEADER = "x-switchyard-strategy"
FIELDS = frozenset({"strategy", "max_price", "max_latency_s", "only", "ignore", "hedge",
                    "lane"})
LANES = ("discount", "standard")  # what a request may ask for (routing/planning.py)


def request_policy(route: Any, header: str | None, suffix: str | None) -> Policy:
    """The policy this request asks for, validated; every mistake names its parameter."""
    body = _from_body(route) if route is not None else Policy()
    if header is not None:
        header = header.strip()
        if header not in STRATEGIES:
            raise bad_request(HEADER, f"header {HEADER} must be one of {', '.join(STRATEGIES)}")
    return body.over(Policy(strategy=header or suffix))


def _from_body(route: Any) -> Policy:
    if isinstance(route, str):  # a multipart form field carries the object as JSON text
        try:
            route = orjson.loads(route)
        except orjson.JSONDecodeError:
            raise bad_request("route", "'route' must be a JSON object") from None
    if not isinstance(route, dict):
        raise bad_request("route", "'route' must be an object")
    for name in route:
        if name not in FIELDS:
            raise bad_request(f"route.{name}", f"unrecognized routing option: {name} (known: "
                                               f"{', '.join(sorted(FIELDS))})",
                              code="unknown_parameter")
    strategy = route.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        raise bad_request("route.strategy", f"'route.strategy' must be one of "
                                            f"{', '.join(STRATEGIES)}")
    hedge = route.get("hedge")
    if hedge is not None and not isinstance(hedge, bool):
        raise bad_request("route.hedge", "'route.hedge' must be true or false")
    lane = route.get("lane")
    if lane is not None and lane not in LANES:
        raise bad_request("route.lane", f"'route.lane' must be one of {', '.join(LANES)}")
    return Policy(strategy=strategy, max_price=_price(route.get("max_price")),
                  max_latency_s=_seconds(route.get("max_latency_s")),
                  only=_providers(route, "only"), ignore=_providers(route, "ignore"),
                  hedge=hedge, lane=lane)


def _price(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        price = Decimal(str(value)) if _is_number(value) else None
    except InvalidOperation:
        price = None
    if price is None or not price.is_finite() or price < 0:
        raise bad_request("route.max_price", "'route.max_price' must be a non-negative number "
                                             "of US dollars per image")
    return price


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise bad_request("route.max_latency_s", "'route.max_latency_s' must be a positive "
                                                 "number of seconds")
    return float(value)


def _providers(route: dict[str, Any], name: str) -> frozenset[str]:
    value = route.get(name)
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad_request(f"route.{name}", f"'route.{name}' must be a list of provider names")
    return frozenset(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
