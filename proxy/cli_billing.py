"""`switchyard keys …` and `switchyard usage`: tenant keys, their limits and webhook secrets,
and the ledger.

Thin: flags become the same key settings the admin API takes (billing.keys.parse_limits), and
reports come from billing.usage. A key (or a new webhook secret) is printed once, alone on
the last line of stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from decimal import Decimal
from typing import Any

from proxy.billing import savings
from proxy.billing.amounts import dollars, period_label
from proxy.billing.keys import KeyLimits, KeyRecord, LimitError, describe, parse_limits
from proxy.billing.store import Store
from proxy.billing.usage import CSV_COLUMNS, GROUPS, as_csv, cells
from proxy.billing.webhook_secrets import GRACE_S, MAX_GRACE_HOURS
from proxy.catalog import STRATEGIES
from proxy.config import Config

# flag -> key setting; values are parsed as the admin API's JSON would be
LIMIT_FLAGS: dict[str, str] = {"tenant": "", "budget": "budget_usd", "period": "budget_period",
                               "rpm": "rpm", "ipm": "ipm", "concurrency": "concurrency",
                               "models": "allowed_models", "strategy": "strategy", "plan": "plan",
                               "cache_ttl": "cache_ttl_s", "lane": "lane"}


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    keys = commands.add_parser("keys", help="manage tenant API keys").add_subparsers(
        dest="action", required=True)
    create = keys.add_parser("create", parents=[common],
                             help="create a key; prints it once, alone on the last line")
    create.add_argument("name")
    _limit_flags(create)
    create.set_defaults(run=create_key)
    keys.add_parser("list", parents=[common], help="one key per line, id first (never the "
                                                   "key itself)").set_defaults(run=list_keys)
    for name, run, text in (("show", show_key, "one key's settings and this period's spend"),
                            ("revoke", revoke_key, "revoke a key by its id"),
                            ("rotate", rotate_key, "a new secret for a key (printed once, "
                                                   "last line); the old one stops working")):
        action = keys.add_parser(name, parents=[common], help=text)
        action.add_argument("id")
        action.set_defaults(run=run)
    webhook = keys.add_parser("rotate-webhook-secret", parents=[common],
                              help="a new webhook signing secret for a key (printed once, "
                                   "last line)")
    webhook.add_argument("id")
    webhook.add_argument("--grace-hours", type=float, default=GRACE_S / 3600,
                         help="how long the secret before it still signs beside it, a "
                              "second signature (default 24; 0 ends it now)")
    webhook.set_defaults(run=rotate_webhook_secret)
    change = keys.add_parser("set", parents=[common], help="change a key's settings "
                                                           "('none' clears one)")
    change.add_argument("id")
    _limit_flags(change, tenant=False)
    change.set_defaults(run=set_key)

    usage = commands.add_parser("usage", parents=[common], help="usage from the ledger")
    usage.add_argument("--from", dest="start", type=dt.date.fromisoformat,
                       help="first UTC day, YYYY-MM-DD")
    usage.add_argument("--to", dest="end", type=dt.date.fromisoformat,
                       help="last UTC day, YYYY-MM-DD (inclusive)")
    usage.add_argument("--key", help="one key's id")
    usage.add_argument("--group-by", default="day,model",
                       help=f"comma-separated: {', '.join(GROUPS)} (default day,model)")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout, for a spreadsheet")
    usage.set_defaults(run=usage_report)


def _limit_flags(parser: argparse.ArgumentParser, tenant: bool = True) -> None:
    if tenant:
        parser.add_argument("--tenant", help="tenant name: keys of one tenant share its "
                                              "response cache (default: a tenant of its own)")
    parser.add_argument("--budget", metavar="USD", help="budget in US dollars")
    parser.add_argument("--period", help="budget period: total, monthly or daily")
    parser.add_argument("--rpm", help="requests per minute")
    parser.add_argument("--ipm", help="images per minute")
    parser.add_argument("--concurrency", help="requests in flight at once")
    parser.add_argument("--models", help="comma-separated models the key may use")
    parser.add_argument("--strategy", help=f"default strategy: {', '.join(STRATEGIES)}")
    parser.add_argument("--plan", help="price plan from routes/plans.toml")
    parser.add_argument("--cache-ttl", metavar="SECONDS",
                        help="keep and reuse this key's answers this long (0: never)")
    parser.add_argument("--lane", help="discount: wait for a discount lane only (Gemini's "
                        "Flex, a batch API); standard: never take one")


def _limits(args: argparse.Namespace, base: KeyLimits) -> KeyLimits:
    changes: dict[str, Any] = {}
    for flag, setting in LIMIT_FLAGS.items():
        raw = getattr(args, flag, None)
        if not setting or raw is None:
            continue
        changes[setting] = _value(setting, raw)
    try:
        return parse_limits(changes, base, STRATEGIES)
    except LimitError as exc:
        flag = next(f for f, s in LIMIT_FLAGS.items() if s == exc.field)
        raise SystemExit(f"switchyard: --{flag}: {exc}") from None


def _value(setting: str, raw: str) -> Any:
    if raw.lower() == "none":
        return None
    if setting == "allowed_models":
        return [m.strip() for m in raw.split(",") if m.strip()]
    if setting in ("rpm", "ipm", "concurrency", "cache_ttl_s"):
        return int(raw) if raw.lstrip("-").isdigit() else raw
    if setting == "budget_usd":
        try:
            return Decimal(raw)
        except ArithmeticError:
            return raw
    return raw


def create_key(config: Config, args: argparse.Namespace) -> int:
    limits = _limits(args, KeyLimits())
    with Store(config.database) as store:
        record, key = store.create_key(args.name, args.tenant, limits)
        secrets = store.webhook_secrets.of_key(record.id)
    assert secrets is not None and secrets.current is not None
    print(f"created {record.id} ({record.name}); its webhook signing secret and the key are "
          f"shown once, store them now:")
    print(f"webhook secret: {secrets.current}")
    print(key)
    return 0


def list_keys(config: Config, args: argparse.Namespace) -> int:
    """Tab-separated: id, state, name, hint, created (UTC), then the limits if any."""
    with Store(config.database) as store:
        records = store.list_keys()
    for record in records:
        state = "active" if record.active else "revoked"
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created_at))
        limits = _summary(record.limits)
        print(f"{record.id}\t{state}\t{record.name}\t{record.hint}\t{created}"
              f"{chr(9) + limits if limits else ''}")
    return 0


def _summary(limits: KeyLimits) -> str:
    parts = [f"budget ${dollars(limits.budget_usd)}/{limits.budget_period}"
             if limits.budget_usd is not None else "",
             *(f"{name} {value}" for name, value in (("rpm", limits.rpm), ("ipm", limits.ipm),
                                                     ("concurrency", limits.concurrency))
               if value is not None)]
    return ", ".join(p for p in parts if p)


def show_key(config: Config, args: argparse.Namespace) -> int:
    with Store(config.database) as store:
        record = _found(store, args.id)
        period = period_label(record.limits.budget_period, time.time())
        spent, reserved = store.money.spent(record.id, period)
    for name, value in describe(record).items():
        print(f"{name:<15} {'' if value is None else value}")
    print(f"{'spent':<15} ${dollars(spent)} in {period} (${dollars(reserved)} reserved now)")
    return 0


def set_key(config: Config, args: argparse.Namespace) -> int:
    with Store(config.database) as store:
        record = _found(store, args.id)
        store.update_limits(record.id, _limits(args, record.limits))
    print(f"updated {record.id}; running servers apply it within a second")
    return 0


def revoke_key(config: Config, args: argparse.Namespace) -> int:
    with Store(config.database) as store:
        revoked = store.revoke_key(args.id)
    if not revoked:
        print(f"switchyard: no active key with id {args.id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


def rotate_key(config: Config, args: argparse.Namespace) -> int:
    with Store(config.database) as store:
        rotated = store.rotate_key(args.id)
    if rotated is None:
        print(f"switchyard: no active key with id {args.id!r}", file=sys.stderr)
        return 1
    print(f"rotated {args.id}; the old secret stops working within a second. The new one, "
          f"shown once:")
    print(rotated[1])
    return 0


def rotate_webhook_secret(config: Config, args: argparse.Namespace) -> int:
    if not 0 <= args.grace_hours <= MAX_GRACE_HOURS:
        raise SystemExit(f"switchyard: --grace-hours: from 0 to {MAX_GRACE_HOURS}")
    with Store(config.database) as store:
        rotated = store.webhook_secrets.rotate(args.id, args.grace_hours * 3600)
    if rotated is None:
        print(f"switchyard: no active key with id {args.id!r}", file=sys.stderr)
        return 1
    secret, until = rotated
    before = "stopped signing now" if until is None else \
        f"signs beside it until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}"
    print(f"rotated {args.id}'s webhook secret; the one before it {before}. The new one, "
          f"shown once:")
    print(secret)
    return 0


def _found(store: Store, key_id: str) -> KeyRecord:
    record = store.get_key(key_id)
    if record is None:
        raise SystemExit(f"switchyard: no key with id {key_id!r}")
    return record


def usage_report(config: Config, args: argparse.Namespace) -> int:
    """The ledger's totals, with what the images would have cost on each model's reference
    route and what routing saved: the figures the usage API and the console show."""
    group_by = [g for g in args.group_by.split(",") if g]
    start = _epoch(args.start)
    end = _epoch(args.end + dt.timedelta(days=1)) if args.end else None
    try:
        reference = savings.for_config(config.routes_dir, config.reference_routes)
    except savings.ReferenceError as exc:
        raise SystemExit(f"switchyard: {exc}") from None
    with Store(config.database) as store:
        try:
            rows = store.usage.report(group_by, start, end, args.key, reference)
        except ValueError as exc:
            raise SystemExit(f"switchyard: --group-by: {exc}") from None
    if args.csv:
        sys.stdout.write(as_csv(group_by, rows))
        return 0
    table = [[*group_by, *CSV_COLUMNS], *(cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _epoch(day: dt.date | None) -> int | None:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()) if day else None
