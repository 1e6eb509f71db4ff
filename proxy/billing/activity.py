"""What the console shows of recent work: the latest ledger rows, async jobs and batches with
their progress, and the latencies clients saw per route and tier.

Read-only, and never a prompt or an image: the ledger holds neither, and the jobs' request
bodies (which hold the prompt) are not selected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.billing.amounts import usd
from proxy.billing.db import Database

# The latencies behind the observed p50/p95: this many of the latest successes, so the read
# costs the same at any traffic (an index walk on ledger_time).
LATENCY_SAMPLES = 2000


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    key_id: str
    model: str
    provider: str | None
    tier: str
    images: int
    outcome: str
    failure: str | None
    attempts: int
    latency_ms: int
    billed_usd: Decimal
    upstream_usd: Decimal
    created_at: int


@dataclass(frozen=True, slots=True)
class Work:
    """An async job or a batch: its state and, for a batch, its items by state."""

    id: str
    kind: str  # "job" | "batch"
    key_id: str
    state: str
    total: int
    done: int  # items that ended (succeeded, failed or cancelled)
    failed: int
    created_at: int


@dataclass(frozen=True, slots=True)
class Observed:
    """Attempt-to-answer seconds of a route's recent successes in one tier."""

    p50_s: float
    p95_s: float
    samples: int


def _where(key_id: str | None, clause: str = "") -> tuple[str, tuple[Any, ...]]:
    parts = [c for c in (clause, "key_id = ?" if key_id else "") if c]
    return (" WHERE " + " AND ".join(parts) if parts else ""), ((key_id,) if key_id else ())


def requests(db: Database, key_id: str | None, limit: int) -> list[Request]:
    """The latest ledger rows, newest first (abandoned upstream calls are not requests)."""
    where, args = _where(key_id, "outcome <> 'abandoned'")
    rows = db.query("SELECT request_id, key_id, model, provider, tier, n_delivered, outcome, "
                    "failure, attempts, latency_ms, billed_micros, upstream_micros, created_at "
                    f"FROM ledger{where} ORDER BY created_at DESC, request_id DESC LIMIT ?",
                    (*args, limit))
    return [Request(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], int(r[8]),
                    int(r[9]), usd(int(r[10])), usd(int(r[11])), int(r[12])) for r in rows]


def jobs(db: Database, key_id: str | None, limit: int) -> list[Work]:
    """The latest async jobs (batch items are counted in their batch instead)."""
    where, args = _where(key_id, "batch_id IS NULL")
    rows = db.query(f"SELECT id, key_id, state, created_at FROM jobs{where} "
                    "ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit))
    return [Work(r[0], "job", r[1], r[2], 1, int(r[2] in _ENDED), int(r[2] == "failed"),
                 int(r[3])) for r in rows]


_ENDED = ("succeeded", "failed", "cancelled")


def batches(db: Database, key_id: str | None, limit: int) -> list[Work]:
    """The latest batches with how many of their items ended."""
    where, args = _where(key_id)
    rows = db.query(f"SELECT id, key_id, status, total, created_at FROM batches{where} "
                    "ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit))
    counts: dict[str, dict[str, int]] = {}
    if rows:
        marks = ", ".join("?" * len(rows))
        for batch_id, state, n in db.query(
                f"SELECT batch_id, state, COUNT(*) FROM jobs WHERE batch_id IN ({marks}) "
                "GROUP BY batch_id, state", tuple(r[0] for r in rows)):
            counts.setdefault(batch_id, {})[state] = int(n)
    found = []
    for batch_id, key, status, total, created in rows:
        states = counts.get(batch_id, {})
        found.append(Work(batch_id, "batch", key, status, int(total),
                          sum(states.get(s, 0) for s in _ENDED), states.get("failed", 0),
                          int(created)))
    return found


def latencies(db: Database, samples: int = LATENCY_SAMPLES
              ) -> dict[tuple[str, str], Observed]:
    """(route id, tier) -> p50/p95 of the latest successes' latencies, fleet-wide (every
    replica writes the ledger), as clients saw them (failover included)."""
    rows = db.query("SELECT route, tier, latency_ms FROM ledger WHERE outcome = 'success' "
                    "AND route IS NOT NULL ORDER BY created_at DESC LIMIT ?", (samples,))
    grouped: dict[tuple[str, str], list[float]] = {}
    for route, tier, ms in rows:
        grouped.setdefault((route, tier), []).append(int(ms) / 1000)
    return {key: Observed(quantile(values, 0.5), quantile(values, 0.95), len(values))
            for key, values in grouped.items()}


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (as the router's own p95 is taken)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
