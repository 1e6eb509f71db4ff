"""One structured JSON line per image request, on the `switchyard.requests` logger.

It says who asked (the key's id, never the key), what, who served it, how it ended, how long it
took and what it cost. The prompt appears only when the operator sets `log_prompts`.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import orjson

from proxy.domain import ImageRequest

log = logging.getLogger("switchyard.requests")


def request_line(request_id: str, key_id: str, asked: ImageRequest, outcome: str, *,
                 seconds: float, provider: str | None = None, attempts: int = 0,
                 billed: Decimal | None = None, upstream: Decimal | None = None,
                 with_prompt: bool = False) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    record: dict[str, Any] = {
        "request_id": request_id, "key_id": key_id, "model": asked.model, "kind": asked.kind,
        "n": asked.n, "tier": asked.geometry.tier, "provider": provider, "attempts": attempts,
        "outcome": outcome, "latency_ms": round(seconds * 1000),
        "billed_usd": str(billed) if billed is not None else None,
        "upstream_usd": str(upstream) if upstream is not None else None,
    }
    if with_prompt:
        record["prompt"] = asked.prompt
    log.info("%s", orjson.dumps(record).decode())
