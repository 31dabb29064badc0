"""Which ledger partition owns what, and how one hold is split across partitions.

With `RELAYBUS_LEDGER_PARTITIONS=N` (default 1) the ledger is N partitions `p0 … p{N-1}`, each
with its own fenced writer, journal subject and request subjects. A budget level (`user:alice`,
`agent:research`, `run:RUN`; its periods too) and a rate key live in the partition their name
hashes to, and an account in the partition its name hashes to. A hold's home is its payer's
partition: it keeps the hold's accounts (the money a capture moves, the payer's statement).

A hold whose levels live in several partitions is placed as one part per partition, all under
the hold's id: the home part carries the accounts and lists the others (`shares`); each share
(`share` = the home's partition) reserves its levels only and outlives the home by
`SHARE_GRACE_S`, so a capture the home took always finds its shares still open. The client
places the parts at once and voids those placed if any is refused, so a hold is all or nothing
in its outcome; each partition never lets its own levels go over.

With one partition nothing is split and the subjects are the unpartitioned ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import msgspec

from relaybus.bus import PermissionDenied, RelayError
from relaybus.services.ledger.errors import LedgerError

from .ops import Cap, Hold, Op, SetBudget, SetRateLimit, Transfer, Void

SHARE_GRACE_S = 60.0


def names(count: int) -> list[str]:
    return [f"p{i}" for i in range(count)]


def owner(key: str, count: int) -> str:
    """The partition of a budget level, a rate key or a hold id (a level's period, `@…`, stays
    with its level)."""
    if count <= 1:
        return "p0"
    base = key.split("@", 1)[0]
    return f"p{zlib.crc32(base.encode()) % count}"


def split_hold(hold: Hold, count: int) -> dict[str, Hold]:
    """The parts of `hold`, by partition: the home's first. One partition: the hold itself."""
    home = owner(hold.payer, count)
    levels: dict[str, list[str]] = {home: []}
    for level in hold.levels:
        levels.setdefault(owner(level, count), []).append(level)
    rate_at = owner(hold.rate, count) if hold.rate else home
    levels.setdefault(rate_at, [])
    if len(levels) == 1:
        return {home: hold}
    shares = sorted(p for p in levels if p != home)
    parts = {home: msgspec.structs.replace(hold, levels=levels[home], shares=shares)}
    parts[home] = msgspec.structs.replace(parts[home], rate=hold.rate if rate_at == home else "")
    for partition in shares:
        parts[partition] = msgspec.structs.replace(
            hold,
            levels=levels[partition],
            rate=hold.rate if rate_at == partition else "",
            ttl_s=hold.ttl_s + SHARE_GRACE_S,
            share=home,
        )
    return parts


def misplaced(partition: str, count: int, keys: Iterable[str]) -> str | None:
    """Why an operation on `keys` does not belong on `partition` (None: it does)."""
    for key in keys:
        if key and owner(key, count) != partition:
            return (
                f"{key!r} belongs to ledger partition {owner(key, count)}, not {partition} "
                f"(the ledger has {count}); send it through LedgerClient, which routes each "
                "part to its partition, or check RELAYBUS_LEDGER_PARTITIONS matches the ledger's"
            )
    return None


def merge(query: str, answers: list[Any], req: dict[str, Any]) -> Any:
    """One answer from every partition's answer to a query sent to all of them."""
    if len(answers) == 1:
        return answers[0]
    if query == "balance":
        return _merge_balances(answers, req)
    if query == "levels":
        return sorted((row for answer in answers for row in answer), key=lambda r: r["level"])
    if query == "holds":
        return [row for answer in answers for row in answer]
    if query == "statement":
        return _merge_statements(answers)
    if query == "run_cost":
        return _merge_run_costs(answers)
    if query == "ping":
        return {"clock": max(a["clock"] for a in answers), "partitions": len(answers)}
    raise ValueError(f"no merge for ledger query {query!r}")


def _merge_balances(answers: list[Any], req: dict[str, Any]) -> Any:
    totals: dict[str, int] = {}
    currency: dict[str, str] = {}
    for answer in answers:
        for row in [answer] if isinstance(answer, dict) else answer:
            totals[row["account"]] = totals.get(row["account"], 0) + row["balance"]
            currency[row["account"]] = currency.get(row["account"]) or row["currency"]
    rows = [
        {"account": a, "balance": b, "currency": currency[a]} for a, b in sorted(totals.items())
    ]
    if req.get("account"):
        return rows[0] if rows else {"account": req["account"], "balance": 0, "currency": ""}
    return rows


def _merge_statements(answers: list[Any]) -> Any:
    lines = sorted((line for a in answers for line in a["lines"]), key=lambda x: x["time"])
    totals = {key: sum(a["totals"][key] for a in answers) for key in answers[0]["totals"]}
    by: dict[str, dict[str, int]] = {}
    for answer in answers:
        for dim, buckets in answer["by"].items():
            merged = by.setdefault(dim, {})
            for name, amount in buckets.items():
                merged[name] = merged.get(name, 0) + amount
    total = sum(a["total"] for a in answers)
    return {**answers[0], "total": total, "totals": totals, "lines": lines, "by": by}


def _merge_run_costs(answers: list[Any]) -> Any:
    merged = dict(answers[0])
    for key in ("spent", "held", "steps", "tokens", "tokens_held"):
        merged[key] = sum(a[key] for a in answers)
    merged["payments"] = {
        key: sum(a["payments"][key] for a in answers) for key in ("spent", "held")
    }
    return merged


def refusal(op: Op, partition: str, count: int) -> RelayError | None:
    """Why `op` may not be decided on `partition` of a ledger of `count` (None: it may)."""
    match op:
        case Hold(share=""):
            if op.shares and (
                count <= 1
                or op.shares != sorted(set(op.shares))
                or any(p == partition or p not in names(count) for p in op.shares)
            ):
                return PermissionDenied(
                    f"hold {op.id} lists shares {op.shares}: only a partitioned ledger's client "
                    "splits a hold; send the hold whole through LedgerClient"
                )
            why = misplaced(partition, count, [op.payer, *op.levels, op.rate])
        case Hold():
            if count <= 1 or op.shares or op.share == partition or op.share not in names(count):
                return PermissionDenied(
                    f"hold {op.id} claims to be a share of partition {op.share!r}: only a "
                    "partitioned ledger's client splits a hold; send it whole through LedgerClient"
                )
            why = misplaced(partition, count, [*op.levels, op.rate])
        case SetBudget():
            why = misplaced(partition, count, [op.budget.level])
        case Cap():
            why = misplaced(partition, count, [op.level])
        case SetRateLimit():
            why = misplaced(partition, count, [op.limit.key])
        case Transfer():
            why = misplaced(partition, count, [op.payer])
        case Void(undo=True) if count <= 1:
            return PermissionDenied(
                f"void {op.id} undoes part of a split hold, and this ledger splits none; "
                "void the hold without `undo`"
            )
        case _:  # capture, void, refund: found by their hold's id; tick: every partition
            why = None
    return LedgerError(why) if why else None
