"""Money as the ledger keeps it (integer micro-dollars) and as people read it, and the budget
window a moment falls in."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

MICRO = Decimal("0.000001")


def micros(amount: Decimal) -> int:
    """US dollars to integer micro-dollars (half a micro-dollar rounds up)."""
    return int((amount / MICRO).to_integral_value(ROUND_HALF_UP))


def usd(amount_micros: int) -> Decimal:
    return Decimal(amount_micros).scaleb(-6)


def dollars(amount: Decimal) -> str:
    """An amount as plain text without trailing zeros: '5', '0.0672'."""
    return format(amount.normalize(), "f")


def period_label(period: str, now: float) -> str:
    """The budget window a moment falls in: 'total', '2026-11' (monthly) or '2026-11-22'."""
    if period not in ("monthly", "daily"):
        return "total"  # most keys: no date to format on every request
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    return day.strftime("%Y-%m") if period == "monthly" else day.strftime("%Y-%m-%d")
