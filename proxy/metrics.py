"""Every Prometheus metric Switchyard exports, declared once, with bounded labels.

Label values come only from the catalog (model, provider and route names), the closed failure
set, resolution tiers, fixed outcome words and key ids (never a key, a prompt or other client
input); per-key labels collapse to "-" when `metrics_per_key` is off, for very many tenants.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Remembered(Generic[M]):
    """A labelled metric whose children are kept: prometheus_client's `labels()` validates
    the values and takes a lock on every call, and one image request makes about a dozen
    (label values are bounded, so the dict is too)."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


# Image calls take seconds to minutes; buckets reach five minutes.
SLOW_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300)
# Switchyard's own share of a request: well under a millisecond when all is well.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

REQUESTS = Remembered(Counter(
    "switchyard_requests", "Image requests by public model, serving provider (or 'none') and "
    "outcome: success, a failure class, or quota / rate_limited_key / cancelled.",
    ["model", "provider", "outcome"],
))
IMAGES = Remembered(Counter(
    "switchyard_images", "Images delivered to clients.", ["model", "provider", "tier"],
))
REQUEST_SECONDS = Remembered(Histogram(
    "switchyard_request_duration_seconds", "End-to-end duration of image requests that reached "
    "an upstream, by outcome (success or a failure class).", ["model", "outcome"],
    buckets=SLOW_BUCKETS,
))
OVERHEAD_SECONDS = Remembered(Histogram(
    "switchyard_overhead_seconds", "Time a request spent in Switchyard itself, not waiting on "
    "upstreams.", ["model"], buckets=OVERHEAD_BUCKETS,
))
SECONDS_PER_IMAGE = Remembered(Histogram(
    "switchyard_seconds_per_image", "Upstream seconds per delivered image.",
    ["model", "provider", "tier"], buckets=SLOW_BUCKETS,
))
UPSTREAM_ATTEMPTS = Remembered(Counter(
    "switchyard_upstream_attempts", "Calls to upstream routes by outcome.",
    ["model", "provider", "outcome"],
))
UPSTREAM_SECONDS = Remembered(Histogram(
    "switchyard_upstream_duration_seconds", "Duration of one upstream attempt.",
    ["provider", "outcome"], buckets=SLOW_BUCKETS,
))
UPSTREAM_COST = Remembered(Counter(
    "switchyard_upstream_cost_usd", "What upstreams charged, in US dollars.",
    ["key", "model", "provider"],
))
BILLED = Remembered(Counter(
    "switchyard_billed_usd", "What tenants were billed, in US dollars.",
    ["key", "model", "provider"],
))
FAILOVERS = Counter(
    "switchyard_failovers", "Requests served by a route other than the first one tried.",
    ["model"],
)
HEDGES = Counter(
    "switchyard_hedges", "Second attempts started because the first passed its route's p95.",
    ["model"],
)
RESCUES = Counter(
    "switchyard_hang_rescues",
    "Attempts that hung (past their route's stall time, nothing delivered there since they "
    "began) and were moved to the next route (hedging off) or raced by it (hedging on).",
    ["model", "outcome"],
)
CONTENT_BLOCKS = Counter(
    "switchyard_content_blocks", "Requests an upstream refused on content policy.",
    ["model", "provider"],
)
KEY_REJECTIONS = Counter(
    "switchyard_key_rejections", "Requests refused by a key's own limits (rate or budget).",
    ["key", "limit"],
)
BUDGET_REMAINING = Gauge(
    "switchyard_budget_remaining_usd", "What is left of a key's budget this period.", ["key"],
    multiprocess_mode="mostrecent",
)
BACKGROUND_ERRORS = Counter(
    "switchyard_background_errors", "Exceptions in background loops, by loop (job_claims, "
    "job_runs, job_leases, webhooks, batch_finalize, batch_gather, submit_journal, "
    "budget_sweep, media_sweep, deferred_writes, delivered_marks, heap_trim, wal_checkpoint, "
    "fleet_state, fleet_health_publish, fleet_health_listen): each is logged with its "
    "traceback and the loop goes on.",
    ["loop"],
)
CONNECTIONS_CUT = Counter(
    "switchyard_connections_cut", "Client connections closed for being too slow or too big: "
    "header_timeout, body_timeout, send_timeout (408 or a plain close), headers_too_large "
    "(431). Idle keep-alive connections closed on time are not counted.",
    ["reason"],
)
LEDGER_BACKLOG = Gauge(
    "switchyard_ledger_backlog", "Ledger writes started and not yet committed.",
    multiprocess_mode="livesum",
)
ROUTE_SCORE = Gauge(
    "switchyard_route_health_score", "A route's health from 0 to 1: its success ratio, halved "
    "while its breaker is half open, 0 while open or resting after a 429.",
    ["model", "provider"],
    multiprocess_mode="mostrecent",
)
ROUTE_LATENCY = Gauge(
    "switchyard_route_latency_ewma_seconds", "A route's expected attempt seconds by tier.",
    ["model", "provider", "tier"],
    multiprocess_mode="mostrecent",
)
ROUTE_P95 = Gauge(
    "switchyard_route_latency_p95_seconds", "A route's recent p95 attempt seconds by tier.",
    ["model", "provider", "tier"],
    multiprocess_mode="mostrecent",
)
ROUTE_SUCCESS = Gauge(
    "switchyard_route_success_ratio", "A route's success ratio over the health window.",
    ["model", "provider"],
    multiprocess_mode="mostrecent",
)
ROUTE_BREAKER = Gauge(
    "switchyard_route_breaker_state", "A route's circuit breaker: 0 closed, 1 half open, "
    "2 open.", ["model", "provider"],
    multiprocess_mode="mostrecent",
)
ROUTE_REFUSED = Gauge(
    "switchyard_route_refused", "1 while a route's host refuses its credential (401, 403, "
    "quota exhausted): that key is out for a while, the others of its pool go on.",
    ["model", "provider"],
    multiprocess_mode="mostrecent",
)
ROUTE_IN_FLIGHT = Gauge(
    "switchyard_route_in_flight", "Attempts in flight on a route.", ["model", "provider"],
    multiprocess_mode="livesum",
)
HOST_IN_FLIGHT = Gauge(
    "switchyard_host_in_flight", "Calls this replica has in flight on a host (its slots held); "
    "summed over replicas, the fleet's, to hold against switchyard_host_max_in_flight.",
    ["provider"],
    multiprocess_mode="livesum",
)
HOST_MAX_IN_FLIGHT = Gauge(
    "switchyard_host_max_in_flight", "A host's max_in_flight: the most calls the whole fleet "
    "sends it at once (with Redis; without it, each replica).", ["provider"],
    multiprocess_mode="livemax",
)
FLEET_SHARED = Gauge(
    "switchyard_fleet_state_shared", "1 while this replica's rate limits and host slots are "
    "the fleet's (in Redis); 0 while they are its own: Redis is away (fleet mode) or there is "
    "no fleet (single-process mode).",
    multiprocess_mode="livemin",
)
FLEET_FALLBACKS = Counter(
    "switchyard_fleet_fallbacks", "Times this replica turned to its own rate limits and host "
    "slots because Redis did not answer.",
)
CACHE_REQUESTS = Remembered(Counter(
    "switchyard_cache_requests", "Cacheable image requests by public model and how the "
    "response cache answered: hit (from the store), coalesced (shared an identical request's "
    "upstream call) or miss (made the call).", ["model", "result"],
))
CACHE_SAVED = Remembered(Counter(
    "switchyard_cache_saved_usd", "Upstream dollars the response cache saved: what the images "
    "it answered with cost when they were made.", ["model"],
))
CACHE_EVICTIONS = Counter(
    "switchyard_cache_evictions", "Response cache entries dropped, expired or least recently "
    "used, to keep the cache within cache_max_bytes.",
)
CACHE_BYTES = Gauge(
    "switchyard_cache_bytes", "What the response cache held after this replica's last store "
    "(it is shared: every replica sees the same store).",
    multiprocess_mode="mostrecent",
)
