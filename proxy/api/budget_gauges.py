"""switchyard_budget_remaining_usd, per key: set after the key's ledger writes
(proxy/api/ledger.py), and set again or taken away when its budget changes, it is revoked, or a
new budget period begins (admin changes at once; the rest, other replicas' changes included,
with the budget sweep). A gauge left at a key's last value kept the SwitchyardBudgetNearlySpent
alert firing for a key that was revoked, or given more budget, or whose period had rolled over.

Under `serve --workers N` (prometheus multiprocess mode) a worker's values stay in its file
whatever the worker does, and the most recent write of any worker is the one exported: there a
key that is gone gets NaN (which no alert compares true), written by whichever worker learns it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable
from decimal import Decimal

from proxy import metrics
from proxy.billing.amounts import period_label
from proxy.billing.keys import KeyRecord
from proxy.billing.store import Store


class BudgetGauges:
    """The keys whose gauge this process exports (with metrics_per_key)."""

    def __init__(self) -> None:
        self._shown: set[str] = set()

    def show(self, label: str, key: KeyRecord, spent: Decimal, held: Decimal) -> None:
        """The gauge of `key` (with a budget), under `label`: its id, or "-" when keys are
        not told apart in metrics (then it is never refreshed: it is no one key's)."""
        budget = key.limits.budget_usd
        assert budget is not None
        metrics.BUDGET_REMAINING.labels(label).set(float(budget - spent - held))
        if label == key.id:
            self._shown.add(key.id)

    def refresh(self, store: Store, key_ids: Iterable[str] | None = None) -> None:
        """The gauges of `key_ids` (an admin's change; default: every one this process
        shows) as the database has them now; one of a key revoked, gone or without a budget
        is taken away. Synchronous: off the event loop."""
        for key_id in list(self._shown if key_ids is None else key_ids):
            record = store.get_key(key_id)
            if record is None or not record.active or record.limits.budget_usd is None:
                self._shown.discard(key_id)
                if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                    metrics.BUDGET_REMAINING.labels(key_id).set(math.nan)
                else:
                    with contextlib.suppress(KeyError):
                        metrics.BUDGET_REMAINING.remove(key_id)
                continue
            period = period_label(record.limits.budget_period, time.time())
            self.show(key_id, record, *store.money.spent(key_id, period))
