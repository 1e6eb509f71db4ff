"""Every Prometheus metric Switchyard exports, declared once, with bounded labels.

Label values come only from the catalog (model and provider names), the closed failure set and
fixed outcome words: never from prompts, keys or other client input.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Image calls take seconds to minutes; buckets reach five minutes.
_SLOW_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300)

REQUESTS = Counter(
    "switchyard_requests", "Image requests by public model, serving provider and outcome.",
    ["model", "provider", "outcome"],
)
IMAGES = Counter(
    "switchyard_images", "Images delivered to clients.", ["model", "provider", "tier"],
)
REQUEST_SECONDS = Histogram(
    "switchyard_request_duration_seconds", "End-to-end request duration.", ["model"],
    buckets=_SLOW_BUCKETS,
)
UPSTREAM_ATTEMPTS = Counter(
    "switchyard_upstream_attempts", "Calls to upstream routes by outcome.",
    ["provider", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "switchyard_upstream_duration_seconds", "Duration of one upstream attempt.",
    ["provider", "outcome"], buckets=_SLOW_BUCKETS,
)
UPSTREAM_COST = Counter(
    "switchyard_upstream_cost_usd", "What upstreams charged, in US dollars.",
    ["model", "provider"],
)
HEDGES = Counter(
    "switchyard_hedges", "Second attempts started because the first passed its route's p95.",
    ["model"],
)
FAILOVERS = Counter(
    "switchyard_failovers", "Requests served by a route other than the first one tried.",
    ["model"],
)
