"""The `switchyard` command: serve, keys, routes, bench. Thin: parsing and printing over library
calls."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__, cli_batch, cli_bench, cli_billing, heap, logs
from proxy.billing.db import DatabaseUnavailable
from proxy.billing.store import Store
from proxy.catalog import Catalog, CatalogError, Provider
from proxy.config import HTTP_PARSERS, LOOPS, Config, ConfigError, load


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

    cli_bench.add_commands(commands)

    return parser






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
            http=http, h11_max_incomplete_event_size=limits.max_header_bytes), config.workers,
            config.request_timeout_s)
        return 0
    heap.tune()
    uvicorn.run(build_app(config, catalog, own_process=True), host=config.host, port=config.port,
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
    """On a laptop's first start, a key to try it with. Not on a server reachable from other
    machines: there this output is a container's log, which others read and ship."""
    if store.count_keys() == 0 and not is_loopback(config.host):
        print("\nNo tenant keys yet: create one with `switchyard keys create NAME`, or "
              "POST /admin/keys with the admin key (none is made and printed here: this "
              "output is a log others may read).\n")
    elif store.count_keys() == 0:
        record, key = store.create_key("default")
        model = catalog.models[0].name if catalog.models else "MODEL"
        where = "the PostgreSQL database" if config.database_url else config.database_path
        print(f"\nFirst start: created tenant key {record.id} ('default'). It is shown once "
              f"and stored hashed in {where}.\n\n    {key}\n")
        print("Try it from another shell:\n")
        print(f"    export OPENAI_BASE_URL={base} OPENAI_API_KEY={key}")
        print(f"    {sys.executable} -c \"import base64, openai; "
              f"r = openai.OpenAI().images.generate(model='{model}', prompt='a lighthouse'); "
              "open('image.png', 'wb').write(base64.b64decode(r.data[0].b64_json))\"\n")
    else:
        print("\nTenant keys: `switchyard keys list`; a new one: `switchyard keys create NAME`.\n")
