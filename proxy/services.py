"""The shared objects the lifespan builds once and every handler receives, typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from proxy.api.budget_gauges import BudgetGauges
from proxy.api.caching import Flights
from proxy.billing.keys import KeyFinder
from proxy.billing.pricing import Plan
from proxy.billing.store import Store
from proxy.billing.writer import Writer
from proxy.catalog import Catalog
from proxy.config import Config
from proxy.media import MediaStore
from proxy.offload import Offload
from proxy.routing.router import Router
from proxy.state import RateLimits, State

# PostgreSQL's ledger threads. Two: one transaction in flight while the next batch forms.
# Eight (one per pooled connection) took one settle each, so commits were not shared, and
# eight threads in psycopg took the GIL from the event loop: p99 at 12 concurrent was 134 ms
# against 53 ms with two, at no loss of requests/s (3 rounds, a local PostgreSQL).
LEDGER_THREADS = 2


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    catalog: Catalog
    router: Router
    store: Store
    keys: KeyFinder
    media: MediaStore
    state: State  # rate limits and host slots: this process's, or the fleet's
    plans: Mapping[str, Plan]
    # The ledger writes of image requests run on threads of their own: behind other work in
    # the default executor they would wait, and one warm thread answers a lone request sooner.
    ledger_writes: Writer = field(default_factory=lambda: Writer(LEDGER_THREADS))
    # Identical cacheable requests in flight in this process (proxy/api/caching.py).
    flights: Flights = field(default_factory=Flights)
    # A process for CPU-bound work (a batch's lines checked), started when first needed.
    offload: Offload = field(default_factory=Offload)
    # The remaining-budget gauge of each key this process has shown.
    budget_gauges: BudgetGauges = field(default_factory=BudgetGauges)

    @property
    def limits(self) -> RateLimits:
        return self.state.limits


def ledger_writer(engine: str) -> Writer:
    """SQLite is one connection behind a lock: a second thread would only queue on it (and
    take writes a batch could have carried), and a request alone in the process writes on
    the event loop's thread (proxy/billing/writer.py); on PostgreSQL, LEDGER_THREADS."""
    if engine == "sqlite":
        return Writer(1, inline=True)
    return Writer(LEDGER_THREADS)


def services(request: Request) -> Services:
    found = request.app.state.services
    assert isinstance(found, Services)
    return found
