"""`switchyard bench ...`: the benchmarks' command lines (each benchmark lives in proxy/bench/)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from proxy.bench import cache as bench_cache
from proxy.config import HTTP_PARSERS, LOOPS, Config

# `bench batch` and `bench fleet` send the same batch: enough items that its first claims and
# last answers (a second or two with hosts idle) weigh little in the run's throughput.
BATCH_ITEMS = 10_000


def add_commands(commands: Any) -> None:
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
    batch.add_argument("--items", type=int, default=BATCH_ITEMS,
                       help=f"batch size (default {BATCH_ITEMS})")
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
    _add_bench_batch_create(bench)


def _add_bench_batch_create(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = bench.add_parser("batch-create", help=(
        "another key's image requests (hey at a steady rate) through a real `serve`, before "
        "and while a large batch is created; p50/p99/max of each, per round"))
    create.add_argument("--lines", type=int, default=50_000, help="default 50000")
    create.add_argument("--rounds", type=int, default=3, help="default 3")
    create.add_argument("--seconds", type=_positive, default=3.0,
                        help="baseline load per round (default 3)")
    create.add_argument("--workers", type=int, default=4, help="hey workers (default 4)")
    create.add_argument("--rate", type=_positive, default=25.0,
                        help="requests/s per hey worker (default 25)")
    create.add_argument("--code", action="append", default=[],
                        help="serve the code of this checkout root instead of the installed "
                             "one; repeat it to compare trees, interleaved round by round")
    create.add_argument("--database-url", help="serve on this PostgreSQL server, a database of "
                        "the round's own, dropped after (default: SQLite)")
    create.set_defaults(run=_bench_batch_create, config=None, data_dir=None)


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
    fleet.add_argument("--items", type=int, default=BATCH_ITEMS,
                       help=f"batch size, as `bench batch` (default {BATCH_ITEMS})")
    fleet.add_argument("--time-scale", type=_positive, default=0.1,
                       help="batch host latencies are multiplied by this (default 0.1)")
    fleet.set_defaults(run=_bench_fleet, config=None, data_dir=None)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


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
    from proxy.bench import fleet

    try:
        options = fleet.options(args)
    except ValueError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    return _reported(lambda: fleet.main(options))


def _bench_hostile(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import hostile_replies, procs

    with procs.stopped_by_sigterm():
        print(hostile_replies.main(args.requests, args.concurrency))
    return 0


def _bench_batch_create(config: Config, args: argparse.Namespace) -> int:
    from proxy.bench import batch_create

    options = batch_create.Options(args.lines, args.rounds, args.seconds, args.workers,
                                   args.rate, tuple(args.code), args.database_url)
    return _reported(lambda: batch_create.main(options))


def _reported(report: Callable[[], str]) -> int:
    """Print a benchmark's report (the processes it started stop on SIGTERM too); a
    BenchError is the exit status 1 with its message."""
    from proxy.bench import procs

    try:
        with procs.stopped_by_sigterm():
            print(report())
    except procs.BenchError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 1
    return 0
