"""The `switchyard` command: serve, keys, routes, bench. Thin: parsing and printing over library
calls."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__, cli_batch, cli_billing, logs
from proxy.bench import cache as bench_cache
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.store import Store
from proxy.catalog import Catalog, CatalogError, Provider
from proxy.config import Config, ConfigError, load

# uvicorn's choices; `auto` takes uvloop and httptools (dependencies; not on Windows for uvloop).
LOOPS = ("auto", "asyncio", "uvloop")
HTTP_PARSERS = ("auto", "h11", "httptools")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.quiet_libraries()
    try:
        config = load(args.config, data_dir=args.data_dir,
                      **({"host": args.host, "port": args.port, "workers": args.workers}
                         if args.command == "serve" else {}))
        result: int = args.run(config, args)
        return result
    except (ConfigError, CatalogError) as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:  # its message names the engine, never the URL
        print(f"switchyard: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description=(
        "An OpenAI-compatible routing proxy for image generation."))
    parser.add_argument("--version", action="version", version=f"switchyard {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML config file (or SWITCHYARD_CONFIG)")
    common.add_argument("--data-dir", type=Path,
                        help="where keys and images live (or SWITCHYARD_DATA_DIR; "
                             "default ~/.local/share/switchyard)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the proxy")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080)")
    serve.add_argument("--workers", type=int, help="server processes sharing the port "
                                                   "(default 1; or SWITCHYARD_WORKERS)")
    serve.add_argument("--loop", choices=LOOPS, default="auto",
                       help="event loop (default auto: uvloop where it is installed, as it is "
                            "with switchyard on Linux and macOS, else asyncio)")
    serve.add_argument("--http", choices=HTTP_PARSERS, default="auto",
                       help="HTTP/1.1 parser (default auto: httptools); either is guarded by the "
                       "header, body and keep-alive timeouts and max_header_bytes")
    serve.set_defaults(run=_serve)

    cli_billing.add_commands(commands, common)
    cli_batch.add_commands(commands, common)

    routes = commands.add_parser("routes", help="inspect the provider catalog").add_subparsers(
        dest="action", required=True)
    routes.add_parser("list", parents=[common], help="every route: model, provider, protocol, "
                      "prices by tier, and whether it is live or why not"
                      ).set_defaults(run=_routes_list)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="action", required=True)
    routing = bench.add_parser("routing", help=(
        "run thousands of requests through the real router, per strategy, against simulated "
        "backends that go down, slow down, rate-limit and hang, on a virtual clock; compare "
        "with oracles and single providers and check the routing targets"))
    routing.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    routing.add_argument("--market", choices=("default", "hangs", "pools", "cache", "all"),
                         default="all",
                         help="default: an hour with an outage, a slow spell and a 429 storm; "
                         "hangs: issue 20's audit (three hosts, a hang among the events, "
                         "hedging off and on, judged per phase); pools: one key against a "
                         "key pool on a host with per-key rate limits; cache: repeated seeds "
                         "with the response cache off and on (bench cache); all: every "
                         "market (default)")
    routing.add_argument("--duration", type=_positive, default=None,
                         help="virtual seconds; events scale with it (default: the market's, "
                         "3600 for default, 600 for hangs, 300 for pools)")
    routing.add_argument("--rate", type=_positive, default=None,
                         help="mean requests per virtual second (default: the market's, 2 for "
                         "default, 16 for hangs and pools)")
    # The benchmark reads no config; these keep main()'s config loading uniform.
    routing.set_defaults(run=_bench_routing, config=None, data_dir=None)
    overhead = bench.add_parser("overhead", help=(
        "latency, throughput and memory Switchyard adds: a fake OpenAI-shaped upstream and "
        "`python -m proxy serve` in their own processes, driven straight and through the proxy"))
    overhead.add_argument("--runs", type=int, default=None,
                          help="rounds per scenario, every side once a round (default 3)")
    overhead.add_argument("--seconds", type=float, default=None,
                          help="seconds of load per side and round, after warm-up (default 2)")
    overhead.add_argument("--scenario", action="append", default=None,
                          help="SIZE:CONCURRENCY[:png|jpeg], e.g. 1.4MB:8; repeatable (default: "
                               "2KB:1, 2KB:64, 1.4MB:1, 1.4MB:8, 1.4MB:8:jpeg, 6MB:50)")
    overhead.add_argument("--workers", type=int, default=1,
                          help="also measure Switchyard on this many workers, beside one")
    overhead.add_argument("--delay", type=float, default=0.0,
                          help="upstream seconds before each answer (default 0)")
    overhead.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    overhead.add_argument("--loop", choices=LOOPS, default="auto",
                          help="Switchyard's event loop (serve --loop; default auto)")
    overhead.add_argument("--http", choices=HTTP_PARSERS, default="auto",
                          help="Switchyard's HTTP parser (serve --http; default auto)")
    overhead.add_argument("--https", action="store_true",
                          help="the fake upstream on https (a throwaway certificate, trusted "
                               "through the bench provider's options.ca_file)")
    overhead.add_argument("--otel", action="store_true",
                          help="each scenario with traces off, then on (OTLP/HTTP to a local "
                               "receiver; needs the otel extra), and the difference")
    overhead.set_defaults(run=_bench_overhead, config=None, data_dir=None)
    stream = bench.add_parser("stream", help=(
        "time to first event of a relayed image stream (partial images), through Switchyard "
        "against a fake streaming OpenAI host's own"))
    stream.add_argument("--requests", type=int, default=200,
                        help="requests each way, one at a time (default 200)")
    stream.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    stream.set_defaults(run=_bench_stream, config=None, data_dir=None)
    batch = bench.add_parser("batch", help=(
        "push a large batch through the Batch API, the queue and the scheduler (in this "
        "process) to fake hosts with concurrency caps and realistic latencies on a fast "
        "clock; print throughput against what the caps allow, cost per image and the "
        "scheduler's own cost per item"))
    batch.add_argument("--items", type=int, default=10_000, help="batch size (default 10000)")
    batch.add_argument("--time-scale", type=_positive, default=0.1,
                       help="host latencies are multiplied by this (default 0.1: 10x clock)")
    batch.add_argument("--overhead-items", type=int, default=2_000,
                       help="items of the zero-latency run that prices the scheduler "
                            "(default 2000)")
    batch.add_argument("--seed", type=int, default=1, help="latency draws (default 1)")
    batch.set_defaults(run=_bench_batch, config=None, data_dir=None)
    soak = bench.add_parser("soak", help=(
        "send many requests through one `serve` process and a fake upstream; print the "
        "server's resident memory as they go and check it stays flat and every request "
        "has its log line"))
    soak.add_argument("--requests", type=int, default=20_000, help="default 20000")
    soak.add_argument("--concurrency", type=int, default=8, help="default 8")
    soak.set_defaults(run=_bench_soak, config=None, data_dir=None)
    hostile = bench.add_parser("hostile", help=(
        "upstreams that drip, gzip-bomb, send 200 MB or gigapixel images: a fresh `serve` "
        "per misbehaviour, its peak memory, and who answered"))
    hostile.add_argument("--requests", type=int, default=4, help="per misbehaviour (default 4)")
    hostile.add_argument("--concurrency", type=int, default=2, help="default 2")
    hostile.set_defaults(run=_bench_hostile, config=None, data_dir=None)
    bench_cache.add_command(bench)
    _add_bench_fleet(bench)
    return parser


def _add_bench_fleet(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = bench.add_parser("fleet", help=(
        "fleet mode's cost and scaling: N `serve` replicas on PostgreSQL and Redis driven by "
        "hey (one per replica) against zero-delay counting hosts, beside one single-process "
        "replica; requests/s and p50/p99 per N, Redis round trips per request, the latency "
        "fleet mode adds, each host's peak against its cap, and a batch through the fleet"))
    fleet.add_argument("--redis-url", help="default redis://127.0.0.1:6379/0; the benchmark's "
                       "keys go under a prefix of its own, deleted after")
    fleet.add_argument("--database-url", help="the PostgreSQL server the benchmark makes a "
                       "database of its own on, dropped after (default "
                       "postgresql://127.0.0.1:5432/test)")
    fleet.add_argument("--seconds", type=_positive, default=4.0,
                       help="length of each throughput run (default 4)")
    fleet.add_argument("--concurrency", type=int, default=12,
                       help="hey workers in all, split evenly over the replicas (default 12)")
    fleet.add_argument("--replicas", default="1,2,3", help="fleet sizes (default 1,2,3)")
    fleet.add_argument("--rounds", type=int, default=3,
                       help="interleaved rounds of throughput runs (default 3)")
    fleet.add_argument("--latency-requests", type=int, default=200,
                       help="requests per run of the 1-concurrent latency pairs (default 200)")
    fleet.add_argument("--items", type=int, default=2000, help="batch size (default 2000)")
    fleet.add_argument("--time-scale", type=_positive, default=0.1,
                       help="batch host latencies are multiplied by this (default 0.1)")
    fleet.set_defaults(run=_bench_fleet, config=None, data_dir=None)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _routes_list(config: Config, args: argparse.Namespace) -> int:
    import os

    from proxy.app import load_catalog
    from proxy.catalog import inventory
    from proxy.domain import TIERS
    from proxy.providers import ADAPTERS

    demo_on = load_catalog(config).demo
    header = ["MODEL", "PROVIDER", "PROTOCOL", "UPSTREAM MODEL", *TIERS, "HOST BILLS", "STATUS"]
    rows = [header]
    for model in inventory(config.routes_dir, os.environ, ADAPTERS):
        for route in model.routes:
            prices = [f"{route.price_per_image[t]:.4f}" if t in route.price_per_image else "-"
                      for t in TIERS]
            terms = route.price_terms + ("; batch items only" if route.provider.deferred
                                         else "")
            rows.append([model.name, route.provider.name, route.provider.protocol,
                         route.upstream_model, *prices, terms, _status(route.provider, demo_on)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    from proxy.state.probe import mode_line

    print()
    print(mode_line(config))
    return 0


def _status(provider: Provider, demo_on: bool) -> str:
    """Whether a provider is live, and if not, what the operator has to set."""
    if provider.protocol == "simulated" and not provider.key_env:
        return "live (simulated demo)" if demo_on else \
            "off: demo is off while a real provider is configured (SWITCHYARD_DEMO=1 keeps it)"
    if not provider.credentialed:
        command_env = provider.options_env.get("token_command")
        alternative = f" (nor {command_env})" if command_env else ""
        return f"off: {provider.key_env} is not set{alternative}"
    missing = [provider.options_env.get(name, name) for name in provider.missing_options()]
    if missing:
        return f"off: {', '.join(missing)} is not set"
    if provider.key is None and provider.options.get("token_command"):
        return "live (token command)"
    return f"live ({provider.key_env} is set)" if provider.key_env else "live"


def _bench_routing(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import hangs, routing

    if args.market in ("default", "all"):
        print(routing.main(args.seed, args.duration or routing.DEFAULT_DURATION_S,
                           args.rate or routing.DEFAULT_RATE), flush=True)
    if args.market == "all":
        print()
    if args.market in ("hangs", "all"):
        print(hangs.main(args.seed, args.duration or hangs.DEFAULT_DURATION_S,
                         args.rate or hangs.DEFAULT_RATE), flush=True)
    if args.market == "all":
        print()
    if args.market in ("pools", "all"):
        from proxy.bench import pools

        print(pools.main(args.seed, args.duration or pools.DEFAULT_DURATION_S,
                         args.rate or pools.DEFAULT_RATE), flush=True)
    if args.market == "all":
        print()
    if args.market in ("cache", "all"):  # repeated seeds through the real app
        from proxy.bench import cache

        print(cache.main())
    return 0


def _bench_overhead(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import overhead, procs

    try:
        options = overhead.options(args.quick, args.runs, args.seconds, args.scenario,
                                   args.delay, (args.loop, args.http), args.https, args.workers)
    except ValueError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    with procs.stopped_by_sigterm():
        if args.otel:
            import importlib.util

            from proxy.bench import overhead_otel

            if importlib.util.find_spec("opentelemetry.exporter.otlp") is None:
                print("switchyard: --otel needs the otel extra (pip install "
                      "'switchyard[otel]')", file=sys.stderr)
                return 2
            print(overhead_otel.main(options))
        else:
            print(overhead.main(options))
    return 0


def _bench_stream(config: Config, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from proxy.bench import first_event, procs

    if args.requests < 1:
        print("switchyard: --requests must be at least 1", file=sys.stderr)
        return 2
    options = first_event.QUICK if args.quick else \
        replace(first_event.Options(), requests=args.requests)
    with procs.stopped_by_sigterm():
        print(first_event.main(options))
    return 0


def _bench_batch(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import batch

    print(batch.main(args.items, args.time_scale, args.seed, args.overhead_items))
    return 0


def _bench_soak(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import procs, soak

    with procs.stopped_by_sigterm():
        print(soak.main(args.requests, args.concurrency, max(1, args.requests // 10)))
    return 0


def _bench_fleet(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import fleet, procs

    try:
        options = fleet.options(args)
    except ValueError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    try:
        with procs.stopped_by_sigterm():
            print(fleet.main(options))
    except procs.BenchError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 1
    return 0


def _bench_hostile(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import hostile_replies, procs

    with procs.stopped_by_sigterm():
        print(hostile_replies.main(args.requests, args.concurrency))
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(config: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from proxy import connections
    from proxy.app import build_app, describe, load_catalog

    if not is_loopback(config.host) and config.admin_key is None:
        print(f"switchyard: refusing to listen on {config.host}, which is reachable from other "
              "machines, without an admin key. Set SWITCHYARD_ADMIN_KEY (or admin_key in the "
              "config file), or bind to 127.0.0.1.", file=sys.stderr)
        return 2
    logs.configure()
    catalog = load_catalog(config)
    _banner(config, catalog, describe(catalog))
    # Slow and oversized clients are cut off inside the HTTP protocol (h11's own cap too).
    limits = connections.Limits.of(config)
    http = connections.protocol(args.http, limits)
    if config.workers > 1:
        from proxy import workers

        _prepare_workers(config, args)
        # Each worker listens on a socket of its own (SO_REUSEPORT): the kernel spreads the
        # connections, where uvicorn's one shared socket let one worker take them all.
        workers.run(uvicorn.Config(
            "proxy.app:from_environment", factory=True, host=config.host, port=config.port,
            access_log=config.access_log, log_config=None, log_level="info", loop=args.loop,
            http=http, h11_max_incomplete_event_size=limits.max_header_bytes), config.workers)
        return 0
    uvicorn.run(build_app(config, catalog), host=config.host, port=config.port,
                access_log=config.access_log, log_config=None, log_level="info",
                loop=args.loop, http=http, h11_max_incomplete_event_size=limits.max_header_bytes)
    return 0


def _prepare_workers(config: Config, args: argparse.Namespace) -> None:
    """Each worker process builds its own app from the environment: hand it the settings this
    command was given, and a fresh directory where the workers' metrics meet."""
    import os
    import shutil

    if args.config:
        os.environ["SWITCHYARD_CONFIG"] = str(args.config)
    os.environ["SWITCHYARD_DATA_DIR"] = str(config.data_dir)
    # Each process takes its share of a host's cap (without Redis): it must know how many share.
    os.environ["SWITCHYARD_WORKERS"] = str(config.workers)
    metrics_dir = config.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


def _banner(config: Config, catalog: Catalog, lines: list[str]) -> None:
    """What a first-time user sees: where it runs, what it serves, and a key to try it with."""
    base = f"http://{config.host}:{config.port}/v1"
    print(f"Switchyard {__version__}: OpenAI-compatible images API at {base}")
    print(f"Console: http://{config.host}:{config.port}/console"
          + (" (sign in with the admin key)" if config.admin_key else
             " (tenant view only: set SWITCHYARD_ADMIN_KEY for the admin view)"))
    for line in lines:
        print(f"  {line}")
    with Store(config.database) as store:
        _first_key(config, catalog, store, base)
    sys.stdout.flush()


def _first_key(config: Config, catalog: Catalog, store: Store, base: str) -> None:
    if store.count_keys() == 0:
        record, key = store.create_key("default")
        model = catalog.models[0].name if catalog.models else "MODEL"
        print(f"\nFirst start: created tenant key {record.id} ('default'). It is shown once "
              f"and stored hashed in {config.data_dir}.\n\n    {key}\n")
        print("Try it from another shell:\n")
        print(f"    export OPENAI_BASE_URL={base} OPENAI_API_KEY={key}")
        print(f"    {sys.executable} -c \"import base64, openai; "
              f"r = openai.OpenAI().images.generate(model='{model}', prompt='a lighthouse'); "
              "open('image.png', 'wb').write(base64.b64decode(r.data[0].b64_json))\"\n")
    else:
        print("\nTenant keys: `switchyard keys list`; a new one: `switchyard keys create NAME`.\n")
