"""Usage reports from the ledger: totals grouped by day, model, provider or key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.billing.db import Database
from proxy.billing.money import usd

# group name -> portable SQL expression (days are whole UTC days since the epoch)
GROUPS: dict[str, str] = {"day": "created_at / 86400", "model": "model",
                          "provider": "provider", "key": "key_id"}


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: dict[str, str]
    requests: int
    succeeded: int
    images: int
    billed_usd: Decimal
    upstream_usd: Decimal


class Usage:
    def __init__(self, db: Database) -> None:
        self._db = db

    def report(self, group_by: Sequence[str], start: int | None = None, end: int | None = None,
               key_id: str | None = None) -> list[UsageRow]:
        """Totals per group over [start, end) (epoch seconds), optionally for one key."""
        unknown = [g for g in group_by if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r} (known: {', '.join(GROUPS)})")
        where, args = _filters(start, end, key_id)
        columns = [f"{GROUPS[g]} AS g{i}" for i, g in enumerate(group_by)]
        # An abandoned call (cut off by a crash, run again) is upstream spend, no request.
        select = ", ".join([*columns, "SUM(CASE WHEN outcome = 'abandoned' THEN 0 ELSE 1 END)",
                            "SUM(CASE WHEN outcome = 'success' THEN 1 ELSE 0 END)",
                            "SUM(n_delivered)", "SUM(billed_micros)", "SUM(upstream_micros)"])
        grouping = f" GROUP BY {', '.join(GROUPS[g] for g in group_by)}" if group_by else ""
        order = f" ORDER BY {', '.join(GROUPS[g] for g in group_by)}" if group_by else ""
        rows = self._db.query(f"SELECT {select} FROM ledger{where}{grouping}{order}", args)
        n = len(group_by)
        return [_row(group_by, row) for row in rows if row[n] or row[n + 4]]


def _filters(start: int | None, end: int | None, key_id: str | None
             ) -> tuple[str, tuple[Any, ...]]:
    clauses, args = [], []
    for clause, value in (("created_at >= ?", start), ("created_at < ?", end),
                          ("key_id = ?", key_id)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _row(group_by: Sequence[str], row: tuple[Any, ...]) -> UsageRow:
    n = len(group_by)
    group = {name: _label(name, row[i]) for i, name in enumerate(group_by)}
    requests, succeeded, images, billed, upstream = row[n:]
    return UsageRow(group, int(requests), int(succeeded or 0), int(images or 0),
                    usd(int(billed or 0)), usd(int(upstream or 0)))


def _label(group: str, value: Any) -> str:
    if group == "day":
        return (dt.date(1970, 1, 1) + dt.timedelta(days=int(value))).isoformat()
    return "" if value is None else str(value)
