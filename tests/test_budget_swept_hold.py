"""A request whose budget hold the crash sweep released while it still ran (the hold outlived
any request by some replica's clock: clocks that disagree) is still counted in `spent` when it
settles, on both engines and by each way a settle is written: it was billed in the ledger and
missing from the budget, so the tenant could overspend it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from proxy.billing.rows import Settle
from proxy.billing.store import Store
from tests.test_billing_store import entry


def _swept(store: Store) -> tuple[str, list[Settle]]:
    """A budgeted key's two settles whose holds the sweep released (they look older than any
    request could live)."""
    key = store.create_key("budgeted")[0].id
    holds = [store.money.reserve(key, "total", 50_000, 10_000_000) for _ in range(2)]
    assert store.money.sweep(-3600) == 2
    assert store.money.spent(key, "total") == (Decimal(0), Decimal(0))
    return key, [(hold, entry(f"req_{i}", key), "total") for i, hold in enumerate(holds)]


@pytest.mark.parametrize("batched", [False, True])
def test_a_swept_hold_s_request_is_counted_in_spent(database: str, batched: bool) -> None:
    with Store(database) as store:
        key, settles = _swept(store)
        if batched:  # PostgreSQL: one script; SQLite: multi-row statements
            assert store.money.write_each(settles) == [None, None]  # type: ignore[arg-type]
        else:
            for settle in settles:
                store.money.settle(*settle)
        assert store.money.spent(key, "total") == (Decimal("0.10"), Decimal(0))


def test_a_swept_hold_s_request_written_on_the_loop_is_counted_in_spent(
        tmp_path: Path) -> None:
    with Store(tmp_path / "switchyard.db") as store:
        key, settles = _swept(store)
        store.money.write_now(settles)  # type: ignore[arg-type]
        assert store.money.spent(key, "total") == (Decimal("0.10"), Decimal(0))
