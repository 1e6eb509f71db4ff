"""GET /metrics: the Prometheus exposition, for the operator's scraper and nobody else.

It shows every key's billed dollars, upstream cost and remaining budget. It answers a bearer of
`metrics_token` or of the admin key; while no metrics_token is set, also a loopback client that
sends no credentials at all (a laptop's own Prometheus, with no setup). Any other credential,
a tenant key included, gets 401: tenant keys are never even looked up here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.requests import Request
from starlette.responses import Response

from proxy import metrics as metrics_module
from proxy.api.errors import ApiError
from proxy.config import Config, Secret
from proxy.services import Services, services

CHALLENGE = {"www-authenticate": 'Bearer realm="metrics"'}


async def metrics(request: Request) -> Response:
    """The exposition; under `serve --workers N`, every worker's figures merged (prometheus
    multiprocess mode), whichever worker answers the scrape."""
    svc = services(request)
    check(request, svc.config)
    export_route_health(svc)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def check(request: Request, config: Config) -> None:
    """Return if this request may read the exposition; else raise the 401 (which never
    echoes what was sent)."""
    given = request.headers.get("authorization")
    if given is None:
        if config.metrics_token is None and is_loopback(request):
            return
        raise ApiError(401, "/metrics needs 'Authorization: Bearer <metrics token>': set "
                            "metrics_token (SWITCHYARD_METRICS_TOKEN) and give Prometheus the "
                            "same token (without one set, only loopback clients may scrape)",
                       code="missing_metrics_token", headers=CHALLENGE)
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not matches(token.strip(), config.metrics_token,
                                                 config.admin_key):
        raise ApiError(401, "that is not the metrics token (nor the admin key)",
                       code="invalid_metrics_token", headers=CHALLENGE)


def matches(token: str, *secrets: Secret | None) -> bool:
    """Whether `token` is one of `secrets`, in constant time: digests of equal length are
    compared, every one of them, so that neither length nor which one matched shows."""
    digest = hashlib.sha256(token.encode()).digest()
    found = False
    for secret in secrets:
        if secret is not None:
            expected = hashlib.sha256(secret.reveal().encode()).digest()
            found |= hmac.compare_digest(digest, expected)
    return found


def is_loopback(request: Request) -> bool:
    """Whether the client is this machine. Behind a reverse proxy on 127.0.0.1 uvicorn gives
    the address from X-Forwarded-For instead, as it trusts that proxy (forwarded_allow_ips)."""
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def describe(config: Config) -> str:
    """The startup log's line on who may read /metrics."""
    if config.metrics_token is not None:
        return "metrics: /metrics answers the metrics token (or the admin key) only"
    return ("metrics: /metrics answers loopback clients without credentials (and the admin "
            "key); set SWITCHYARD_METRICS_TOKEN for a Prometheus on another machine")


def export_route_health(svc: Services) -> None:
    """Route health and host slot gauges, read fresh at scrape time (breakers also change as
    time passes)."""
    health = svc.router.health
    for model in svc.catalog.models:
        for route in model.routes:
            labels = (model.name, route.provider.name)
            tracked = health.of(route)
            snaps = {tier: tracked.snapshot(tier) for tier in route.capabilities.tiers}
            first = next(iter(snaps.values()))
            state = first.state.value
            score = 0.0 if not first.available and state != "half_open" else \
                first.success_ratio * (0.5 if state == "half_open" else 1.0)
            metrics_module.ROUTE_SCORE.labels(*labels).set(score)
            metrics_module.ROUTE_SUCCESS.labels(*labels).set(first.success_ratio)
            metrics_module.ROUTE_BREAKER.labels(*labels).set(
                metrics_module.BREAKER_STATES[state])
            metrics_module.ROUTE_IN_FLIGHT.labels(*labels).set(first.in_flight)
            metrics_module.ROUTE_REFUSED.labels(*labels).set(int(first.refused))
            for tier, snap in snaps.items():
                metrics_module.ROUTE_LATENCY.labels(*labels, tier).set(snap.expected_s)
                metrics_module.ROUTE_P95.labels(*labels, tier).set(snap.p95_s)
    for provider in svc.catalog.providers:
        metrics_module.HOST_IN_FLIGHT.labels(provider.name).set(svc.state.slots.in_use(provider))
        metrics_module.HOST_MAX_IN_FLIGHT.labels(provider.name).set(provider.max_in_flight)
