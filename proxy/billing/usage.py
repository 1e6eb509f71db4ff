"""Usage reports from the ledger: totals grouped by day, model, provider or key, and what the
same images would have cost on each model's reference route (what routing saved)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proxy.billing.amounts import dollars, usd
from proxy.billing.db import Database
from proxy.billing.rows import BILLED

# group name -> portable SQL expression (days are whole UTC days since the epoch)
GROUPS: dict[str, str] = {"day": "created_at / 86400", "model": "model",
                          "provider": "provider", "key": "key_id"}
# model -> tier -> USD per image on the model's reference route (proxy/billing/savings.py)
Prices = Mapping[str, Mapping[str, Decimal]]
# Answered and billed (a host's images, or the response cache's): `succeeded`.
BILLED_SQL = "(" + ", ".join(f"'{outcome}'" for outcome in BILLED) + ")"
# A request answered in one attempt (no failover, no hedge): its cost is its route's price.
ALONE = f"CASE WHEN attempts = 1 AND outcome IN {BILLED_SQL} THEN 1 ELSE 0 END"
CSV_COLUMNS = ("requests", "succeeded", "images", "billed_usd", "upstream_usd",
               "reference_usd", "saved_usd")


@dataclass(frozen=True, slots=True)
class Reference:
    """What a report prices delivered images on: each model's reference route's price per
    image, and that route's provider (each member of its key pool alike). A request that
    route served in one attempt is priced at what it cost, which is its price there: the
    tier price alone leaves out what a route that bills input tokens charged besides, and
    would show routing losing it."""

    prices: Prices
    providers: Mapping[str, str] = field(default_factory=dict)

    def served(self, model: str, route: str | None) -> bool:
        """Whether `route` (a ledger row's route id) is the model's reference route."""
        provider = self.providers.get(model)
        if provider is None or route is None:
            return False
        own = f"{model}/{provider}"
        # A pool member is `<provider>.<label>`; a provider's own name holds no dot.
        return route == own or (route.startswith(own + ".") and "." not in route[len(own) + 1:])


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: dict[str, str]
    requests: int
    succeeded: int
    images: int
    billed_usd: Decimal
    upstream_usd: Decimal
    # The delivered images priced on their model's reference route; images it has no price
    # for (another tier, a model gone from the catalog) count at what they did cost.
    reference_usd: Decimal = Decimal(0)

    @property
    def saved_usd(self) -> Decimal:
        """What routing earned against always sending to the reference route (negative: it
        cost more, failed attempts and lost hedges included)."""
        return self.reference_usd - self.upstream_usd


class Usage:
    def __init__(self, db: Database) -> None:
        self._db = db

    def report(self, group_by: Sequence[str], start: int | None = None, end: int | None = None,
               key_id: str | None = None, reference: Reference | None = None
               ) -> list[UsageRow]:
        """Totals per group over [start, end) (epoch seconds), optionally for one key."""
        unknown = [g for g in group_by if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r} (known: {', '.join(GROUPS)})")
        where, args = _filters(start, end, key_id)
        # Priced per model, tier and route (apart: requests served in one attempt), then
        # folded into the groups asked for.
        fine = [GROUPS[g] for g in group_by] + [e for e in ("model", "tier", "route", ALONE)
                                                 if e not in [GROUPS[g] for g in group_by]]
        columns = [f"{expr} AS g{i}" for i, expr in enumerate(fine)]
        # An abandoned call (cut off by a crash, run again) is upstream spend, no request.
        select = ", ".join([*columns, "SUM(CASE WHEN outcome = 'abandoned' THEN 0 ELSE 1 END)",
                            f"SUM(CASE WHEN outcome IN {BILLED_SQL} THEN 1 ELSE 0 END)",
                            "SUM(n_delivered)", "SUM(billed_micros)", "SUM(upstream_micros)"])
        listed = ", ".join(fine)
        rows = self._db.query(f"SELECT {select} FROM ledger{where} GROUP BY {listed} "
                              f"ORDER BY {listed}", args)
        return _fold(group_by, fine, rows, reference or Reference({}))


def _fold(group_by: Sequence[str], fine: Sequence[str], rows: Sequence[tuple[Any, ...]],
          reference: Reference) -> list[UsageRow]:
    n, m = len(group_by), len(fine)
    model_at, tier_at = fine.index("model"), fine.index("tier")
    route_at, alone_at = fine.index("route"), fine.index(ALONE)
    totals: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        requests, succeeded, images, billed, upstream = (int(v or 0) for v in row[m:])
        if not requests and not upstream:
            continue
        model = row[model_at]
        price = reference.prices.get(model, {}).get(row[tier_at])
        if row[alone_at] and reference.served(model, row[route_at]):
            price = None  # served there, in one go: what it cost is its price there
        priced = usd(upstream) if price is None else price * images
        sums = totals.setdefault(tuple(row[:n]), [0, 0, 0, 0, 0, Decimal(0)])
        for i, value in enumerate((requests, succeeded, images, billed, upstream, priced)):
            sums[i] += value
    return [UsageRow({name: _label(name, key[i]) for i, name in enumerate(group_by)},
                     s[0], s[1], s[2], usd(s[3]), usd(s[4]), s[5])
            for key, s in totals.items()]


def as_csv(group_by: Sequence[str], rows: Sequence[UsageRow]) -> str:
    """The report as `switchyard usage --csv` prints it and the usage API's format=csv sends
    it: one header line, then a line per group."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*group_by, *CSV_COLUMNS])
    for row in rows:
        writer.writerow(cells(row))
    return out.getvalue()


def cells(row: UsageRow) -> list[str]:
    """A row's group labels and figures as text, in CSV_COLUMNS order after the groups."""
    return [*row.group.values(), str(row.requests), str(row.succeeded), str(row.images),
            dollars(row.billed_usd), dollars(row.upstream_usd), dollars(row.reference_usd),
            dollars(row.saved_usd)]


def _filters(start: int | None, end: int | None, key_id: str | None
             ) -> tuple[str, tuple[Any, ...]]:
    clauses, args = [], []
    for clause, value in (("created_at >= ?", start), ("created_at < ?", end),
                          ("key_id = ?", key_id)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _label(group: str, value: Any) -> str:
    if group == "day":
        return (dt.date(1970, 1, 1) + dt.timedelta(days=int(value))).isoformat()
    return "" if value is None else str(value)
