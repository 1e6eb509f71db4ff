"""build_app(config) -> Starlette. The one place where the parts are wired together.

The lifespan builds the catalog, store, pooled upstream clients, router and background tasks
once and hands them to handlers as typed state; nothing lives in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import catalog as catalog_module
from proxy import collector, heap, logs, shared, supervise, tracing
from proxy import config as config_module
from proxy import state as state_module
from proxy.api import (
    admin,
    batches,
    callbacks,
    chat,
    console,
    console_api,
    gemini,
    health,
    images,
    jobs,
    metrics,
    models,
    openapi,
    usage,
)
from proxy.api.context import Endpoint, RequestContext
from proxy.api.errors import ApiError, on_api_error, on_http_exception
from proxy.api.job_worker import Worker
from proxy.billing import pricing, savings
from proxy.billing.db import SqliteDatabase
from proxy.billing.keys import KeyFinder
from proxy.billing.store import Store
from proxy.catalog import Catalog
from proxy.config import Config
from proxy.providers import ADAPTERS, check_routes, flows
from proxy.providers.callbacks import Callbacks
from proxy.providers.grouping import Groups
from proxy.routing.health import Health
from proxy.routing.router import Router
from proxy.services import Services, ledger_writer
from proxy.upstream import clients as upstream_clients
from proxy.upstream.credentials import Credentials

if TYPE_CHECKING:
    from proxy.tracing.otel import Tracer

log = logging.getLogger("switchyard")

SWEEP_INTERVAL_S = 60.0
DEFERRED_S = 1.0  # how often writes kept while the database was away are tried again
# SQLite: how often the write-ahead log is copied back through the aside connection. A commit
# that finds 1000 pages in the log copies them itself, holding the shared connection (every
# ledger write) meanwhile; copied as they come, it finds a few.
CHECKPOINT_S = 0.5


def load_catalog(config: Config, env: Mapping[str, str] | None = None) -> Catalog:
    """The live catalog; a route whose protocol options do not check out stops startup."""
    env = os.environ if env is None else env
    models = catalog_module.inventory(config.routes_dir, env, ADAPTERS)
    problems = check_routes(models)
    try:
        savings.reference_routes(models, config.reference_routes)
    except savings.ReferenceError as exc:
        problems.append(str(exc))
    if problems:
        raise catalog_module.CatalogError("; ".join(problems))
    return catalog_module.load(config.routes_dir, env, config.demo, ADAPTERS)


def describe(catalog: Catalog) -> list[str]:
    """Lines for the startup log: which models and routes are live, and whether they are real."""
    lines = []
    if catalog.demo:
        lines.append("demo catalog ON: these upstreams are SIMULATED in-process (no network, "
                     "no provider account); set a provider key to serve real models")
    for model in catalog.models:
        routes = ", ".join(f"{r.provider.name} ({r.provider.protocol})" for r in model.routes)
        lines.append(f"model {model.name} [{model.default_strategy}]: {routes}")
    if not catalog.models:
        lines.append("no live model: set a provider key (see routes/providers.toml) or "
                     "SWITCHYARD_DEMO=1")
    return lines


def from_environment() -> Starlette:
    """The app of one worker process of `serve --workers N`: its settings come from the
    environment the parent prepared. Its logging is its own: spawned, it inherits none."""
    logs.configure()
    return build_app(config_module.load(), own_process=True)


def build_app(config: Config, catalog: Catalog | None = None,
              transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
              tracer: Tracer | None = None, own_process: bool = False) -> Starlette:
    """The ASGI app. `catalog` defaults to loading routes/; `transports` (provider name ->
    httpx transport) lets tests put fake upstreams where the network would be. `tracer`
    defaults to the environment's (OTEL_EXPORTER_OTLP_ENDPOINT): None, traces off.
    `own_process`: the app is the whole process (`serve`, a worker), whose garbage collector
    it tunes once started (proxy/collector.py)."""
    tracer = tracer or tracing.from_environment(os.environ)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tracing.ACTIVE.set(tracer)  # the job worker and its jobs, started below, inherit it
        live = catalog or load_catalog(config)
        store = Store(config.database)
        clients = upstream_clients.build_clients(live.providers, ADAPTERS,
                                                 config.simulation_time_scale, transports,
                                                 config.max_reply_bytes)
        media = shared.media_store(config, store.db)
        plans = pricing.load_plans(config.routes_dir / "plans.toml")
        health = Health(r for m in live.models for r in m.routes)
        # this process's, or the fleet's
        state = state_module.build(config, live.providers, health)
        await state.start()
        app.state.services = Services(
            config=config, catalog=live, state=state, plans=plans,
            router=Router(ADAPTERS, clients, config.request_timeout_s,
                          credentials=Credentials.for_providers(live.providers),
                          health=health,
                          slots=state.slots,
                          callbacks=Callbacks(config.public_base_url),
                          max_pixels=config.max_image_pixels,
                          groups=Groups(flows.run_steps, refs=store.jobs)),
            store=store, keys=KeyFinder(store), media=media,
            ledger_writes=ledger_writer(store.db.engine),
        )
        for line in describe(live):
            log.info("%s", line)
        log.info("%s", metrics.describe(config))
        sweepers = _sweep(app.state.services, config.request_timeout_s)
        worker = Worker(app.state.services, shared.webhook_secret(config, store.db))
        working = asyncio.create_task(worker.run())
        if own_process:
            collector.settle()
        try:
            yield
        finally:
            for sweeper in sweepers:
                sweeper.cancel()
            working.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await working
            logs.write_through()  # the last lines must not wait for a thread that may not run
            await app.state.services.router.groups.aclose()
            await app.state.services.offload.aclose()
            await state.aclose()
            for client in clients.values():
                await client.aclose()
            # Delivery marks still queued are written before the database closes.
            app.state.services.ledger_writes.send_later()
            await asyncio.to_thread(app.state.services.ledger_writes.shutdown)
            await _last_deferred(store)
            store.close()
            if tracer is not None:
                await tracer.close()

    console_page, console_file = console.endpoints()
    return Starlette(
        routes=[
            Route("/v1/images/generations", images.generations, methods=["POST"]),
            Route("/v1/images/edits", images.edits, methods=["POST"]),
            Route("/v1/chat/completions", chat.completions, methods=["POST"]),
            Route("/v1/models", gemini.either(gemini.list_models, models.list_models),
                  methods=["GET"]),
            Route("/v1/images/jobs/{job_id}", jobs.get_job, methods=["GET"]),
            Route("/v1/files", batches.upload_file, methods=["POST"]),
            Route("/v1/files/{file_id}", batches.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}/content", batches.file_content, methods=["GET"]),
            one_path("/v1/batches", {"GET": batches.list_batches, "POST": batches.create_batch}),
            Route("/v1/batches/{batch_id}", batches.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", batches.cancel_batch, methods=["POST"]),
            Route("/v1/usage", usage.own_usage, methods=["GET"]),
            one_path("/admin/keys", {"GET": admin.list_keys, "POST": admin.create_key}),
            one_path("/admin/keys/{key_id}", {"GET": admin.get_key, "PATCH": admin.update_key,
                                              "DELETE": admin.revoke_key}),
            Route("/admin/keys/{key_id}/revoke", admin.revoke_key, methods=["POST"]),
            Route("/admin/keys/{key_id}/rotate", admin.rotate_key, methods=["POST"]),
            Route("/admin/keys/{key_id}/rotate-webhook-secret", admin.rotate_webhook_secret,
                  methods=["POST"]),
            Route("/admin/usage", admin.admin_usage, methods=["GET"]),
            Route("/admin/routes", console_api.routes, methods=["GET"]),
            Route("/admin/activity", console_api.admin_activity, methods=["GET"]),
            Route("/admin/budgets", console_api.budgets, methods=["GET"]),
            Route("/v1/activity", console_api.own_activity, methods=["GET"]),
            Route(console.PATH, console_page, methods=["GET"]),
            Route(console.PATH + "/{name}", console_file, methods=["GET"]),
            one_path("/v1/models/{model}", {
                "GET": gemini.either(gemini.get_model, models.get_model),
                "POST": gemini.generate}),
            Route("/v1beta/models", gemini.list_models, methods=["GET"]),
            one_path("/v1beta/models/{model}", {"GET": gemini.get_model,
                                                "POST": gemini.generate}),
            Route("/images/{name}", images.image_file, methods=["GET"]),
            Route("/callbacks/{provider}/{token}", callbacks.receive, methods=["POST"]),
            Route("/openapi.json", openapi.endpoint(), methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", metrics.metrics, methods=["GET"]),
        ],
        middleware=[*([Middleware(tracer.asgi)] if tracer is not None else []),
                    Middleware(RequestContext, max_body_bytes=config.max_body_bytes,
                               direct={("POST", "/v1/images/generations"): images.generations,
                                       ("POST", "/v1/images/edits"): images.edits})],
        exception_handlers={HTTPException: on_http_exception, ApiError: on_api_error},
        lifespan=lifespan,
    )


def one_path(path: str, handlers: Mapping[str, Endpoint]) -> Route:
    """One route for every method of a path, so that a 405's Allow header names them all
    (Starlette answers with the first route whose path matched, and only its methods)."""
    async def endpoint(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, endpoint, methods=list(handlers))


def _sweep(svc: Services, request_timeout_s: float) -> list[asyncio.Task[None]]:
    """Supervised loops, off the event loop: now and then, delete expired image files and
    release budget reservations no live request can still hold (a crashed process left them);
    every second, the writes kept while the database was away (store.deferred); on SQLite,
    twice a second, copy the write-ahead log back (CHECKPOINT_S)."""
    media, store = svc.media, svc.store

    async def reservations() -> None:
        await asyncio.to_thread(store.money.sweep, request_timeout_s + SWEEP_INTERVAL_S)
        await asyncio.to_thread(svc.budget_gauges.refresh, store)

    async def images() -> None:
        await asyncio.to_thread(media.sweep)

    async def heap_trim() -> None:
        await asyncio.to_thread(heap.trim)

    async def deferred() -> None:
        if store.deferred:  # nothing kept: no thread hop
            await asyncio.to_thread(store.deferred.retry)

    loops = [asyncio.create_task(supervise.forever("budget_sweep", reservations,
                                                   SWEEP_INTERVAL_S)),
             asyncio.create_task(supervise.forever("media_sweep", images, SWEEP_INTERVAL_S)),
             asyncio.create_task(supervise.forever("deferred_writes", deferred, DEFERRED_S)),
             asyncio.create_task(supervise.forever("heap_trim", heap_trim, heap.TRIM_EVERY_S))]
    if isinstance(store.db, SqliteDatabase):
        checkpoint = functools.partial(asyncio.to_thread, store.db.checkpoint)
        loops.append(asyncio.create_task(supervise.forever("wal_checkpoint", checkpoint,
                                                           CHECKPOINT_S)))
    return loops


async def _last_deferred(store: Store) -> None:
    """At shutdown, one more try for the writes kept while the database was away."""
    if not store.deferred:
        return
    with contextlib.suppress(Exception):
        await asyncio.to_thread(store.deferred.retry)
    if store.deferred:
        log.error("%d deferred database writes are lost at shutdown: the database is away "
                  "(holds are released by the sweep of the next start)", len(store.deferred))
