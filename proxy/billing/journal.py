"""The journal of upstream submits made for queued work (jobs, batch items): what a crash cut
off is neither paid for twice nor hidden.

Before such a request sends a submit, its row is written here, "in flight": who pays, the
route, and what the route quotes for the call. When the flow goes on past the submit (to poll
the task it started, say), the submit's reply is kept in the row before the next call. A flow
that fails drops its rows; the others stay until the job's outcome is stored (Jobs.finish,
one transaction with it). So the rows a crash leaves say what was under way: one with a reply
is an upstream task the next run polls again instead of submitting again; one without is a
call whose outcome nobody will learn (a synchronous host, or a submit whose reply never came).
That one goes to the ledger as `abandoned`: billed $0, its quote as upstream spend; so does
any row a job's last run did not account for when the job ends.

Every call here is idempotent, so one whose connection broke under it is simply tried again.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import astuple, dataclass
from functools import partial
from typing import Any

from proxy.billing.db import Cursor, Database, retry_lost
from proxy.billing.rows import Entry

ABANDONED = "abandoned"  # the ledger outcome of a call cut off with its outcome unknown
# SQL on `jobs`: the job has nothing to take up, no upstream call of it journaled with its
# reply kept (a submit whose task a run can poll) and no upstream job it rides with others (a
# batch API's shared batch, remembered in upstream_ref: proxy/providers/grouping.py). A call
# without a reply (a synchronous call cut off, its outcome unknown) would be abandoned and
# sent again by the next run.
UNSTARTED = ("(jobs.upstream_ref IS NULL AND NOT EXISTS (SELECT 1 FROM upstream_calls WHERE "
             "upstream_calls.ticket = jobs.id AND upstream_calls.status IS NOT NULL))")


@dataclass(frozen=True, slots=True)
class Call:
    """One submit of a ticketed request (`part` of a fanned-out request, `ordinal`-th of
    its flow), and the ledger facts its row would need."""

    id: str
    ticket: str
    route: str
    part: int
    ordinal: int
    provider: str
    key_id: str
    tenant: str
    model: str
    tier: str
    n: int
    upstream_micros: int
    created_at: int


@dataclass(frozen=True, slots=True)
class Answer:
    """A submit's reply as kept: enough to hand the flow again."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


_COLUMNS = ", ".join(Call.__dataclass_fields__)
_ENTRY_COLUMNS = ", ".join(Entry.__dataclass_fields__)
_ABANDON = (f"INSERT INTO ledger ({_ENTRY_COLUMNS}) VALUES "
            f"({', '.join('?' * len(Entry.__dataclass_fields__))}) "
            f"ON CONFLICT (request_id) DO NOTHING")


class Journal:
    def __init__(self, db: Database) -> None:
        self._db = db

    def begin(self, call: Call) -> None:
        """The call is about to be sent."""
        retry_lost(lambda: self._db.execute(
            f"INSERT INTO upstream_calls ({_COLUMNS}) VALUES "
            f"({', '.join('?' * len(Call.__dataclass_fields__))}) ON CONFLICT (id) DO NOTHING",
            astuple(call)))

    def answer(self, call_id: str, answer: Answer) -> None:
        """Its reply, which the flow went on from."""
        retry_lost(lambda: self._db.execute(
            "UPDATE upstream_calls SET status = ?, headers = ?, body = ? WHERE id = ?",
            (answer.status, json.dumps(answer.headers), answer.body, call_id)))

    def drop(self, call_ids: Collection[str]) -> None:
        """Rows whose flow failed: nothing in them needs resuming or reporting."""
        for chunk in _chunks(list(call_ids)):
            retry_lost(partial(self._db.execute, f"DELETE FROM upstream_calls WHERE id IN "
                                                 f"({', '.join('?' * len(chunk))})", chunk))

    def recover(self, ticket: str, routes: Collection[str]
                ) -> tuple[list[tuple[Call, Answer]], list[Call]]:
        """What earlier runs of `ticket` left: (each call with a reply, on one of `routes`,
        to be resumed; every other one, now written to the ledger as abandoned)."""
        return retry_lost(lambda: self._recover(ticket, frozenset(routes)))

    def _recover(self, ticket: str, routes: frozenset[str]
                 ) -> tuple[list[tuple[Call, Answer]], list[Call]]:
        kept: list[tuple[Call, Answer]] = []
        abandoned: list[Call] = []
        with self._db.transaction() as cur:
            rows = cur.query(f"SELECT {_COLUMNS}, status, headers, body FROM upstream_calls "
                             f"WHERE ticket = ? ORDER BY created_at, id", (ticket,))
            for row in rows:
                call, answer = _call(row[:-3]), _answer(row[-3:])
                if answer is not None and call.route in routes:
                    kept.append((call, answer))
                else:
                    abandoned.append(_abandon(cur, call))
        return kept, abandoned

    def count(self, ticket: str | None = None) -> int:
        where, args = (" WHERE ticket = ?", (ticket,)) if ticket else ("", ())
        return int(self._db.query(f"SELECT COUNT(*) FROM upstream_calls{where}", args)[0][0])


def settle(cur: Cursor, tickets: str, args: Sequence[Any], accounted: Collection[str] = ()
           ) -> list[Call]:
    """Within a transaction that ends jobs (`tickets`: SQL selecting their ids, with `args`):
    drop the rows their last runs `accounted` for (what those runs did is in their ledger
    rows), and write every other row left to the ledger as abandoned; those calls."""
    drop(cur, accounted)
    rows = cur.query(f"SELECT {_COLUMNS} FROM upstream_calls WHERE ticket IN ({tickets})", args)
    return [_abandon(cur, _call(row)) for row in rows]


def drop(cur: Cursor, accounted: Collection[str]) -> None:
    """Drop the rows a run `accounted` for: what it did is in its ledger rows, whichever run
    ends the job."""
    ids = list(accounted)
    for chunk in _chunks(ids):
        cur.execute(f"DELETE FROM upstream_calls WHERE id IN ({', '.join('?' * len(chunk))})",
                    chunk)


def _abandon(cur: Cursor, call: Call) -> Call:
    """The call's ledger row (billed nothing, its quote as upstream spend), and its journal
    row gone: one transaction, by the caller."""
    entry = Entry(call.id, call.key_id, call.tenant, call.model, call.provider, call.route,
                  call.tier, call.n, 0, 0, call.upstream_micros, 0, ABANDONED, ABANDONED, 1,
                  None, None, call.created_at)
    cur.execute(_ABANDON, astuple(entry))
    cur.execute("DELETE FROM upstream_calls WHERE id = ?", (call.id,))
    return call


def _call(row: tuple[Any, ...]) -> Call:
    (call_id, ticket, route, part, ordinal, provider, key_id, tenant, model, tier, n,
     upstream, created) = row
    return Call(call_id, ticket, route, int(part), int(ordinal), provider, key_id, tenant,
                model, tier, int(n), int(upstream), int(created))


def _answer(row: tuple[Any, ...]) -> Answer | None:
    status, headers, body = row
    if status is None:
        return None
    pairs = tuple((str(k), str(v)) for k, v in json.loads(headers or "[]"))
    return Answer(int(status), pairs, bytes(body or b""))


def _chunks(ids: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]
