"""What may arrive on `<prefix>.svc.ledger.<op>`, and from whom.

Every operation has its own subject token. `AGENT_OPS` are the ones an agent process sends;
everything else (`OPERATOR_OPS`, `OPERATOR_QUERIES`) is for operators and services only.
services/identity/natsconfig.py builds each agent's NATS publish permissions from `AGENT_OPS`,
so an agent's connection cannot even reach an operator operation's subject. The service checks
the request's shape as well (`check_request`), so a request on an agent subject can never do
what belongs to an operator — for example, set a budget by carrying a `budget` field.

No request carries a time: the ledger keeps its own clock (tests inject one into
`LedgerWriter(clock=…)`, never over the wire). A request with an `at` field is refused.
"""

from __future__ import annotations

import msgspec

from relaybus.bus import PermissionDenied
from relaybus.services.ledger.errors import LedgerError

from .model import PAYMENT_LEVEL, Op

__all__ = [
    "AGENT_OPS",
    "OPERATOR_OPS",
    "OPERATOR_QUERIES",
    "PAYMENT_LEVEL",
    "WRITES",
    "check_request",
    "decode_request",
]

AGENT_OPS: tuple[str, ...] = ("hold", "capture", "void", "cap", "run_cost")
"""The ledger subject tokens (`<prefix>.svc.ledger.<op>`) an agent process legitimately sends:
`hold` / `capture` / `void` for costed steps, LLM calls and payments (a budget lease is a hold
too), `cap` to narrow its run's payment levels (`payrun:…`: never to raise them), and the one
query the runtime needs, `run_cost` (a run's cost, tokens and payments).
services/identity/natsconfig.py builds every agent's NATS publish permissions from this tuple
(`<prefix>.svc.ledger.<op>` for each op, nothing else under `svc.ledger`): budgets, rate limits, refunds, transfers, the clock and every
account-wide query (balances, holds, levels, other users' statements) are operator-only."""

OPERATOR_OPS: tuple[str, ...] = ("budget", "limit", "refund", "transfer", "tick")
"""Writes only an operator (or a service such as the payment webhook receiver) may send."""

OPERATOR_QUERIES: tuple[str, ...] = ("balance", "holds", "levels", "statement", "ping")
"""Reads across accounts and users: operators, the console and supervisors only."""

WRITES: tuple[str, ...] = ("hold", "capture", "void", "cap", *OPERATOR_OPS)

# The fields each operation may carry besides `kind` and `id`; any other field set to anything
# but its default is refused (a hold that carries a `budget` does not quietly set one).
FIELDS: dict[str, frozenset[str]] = {
    "hold": frozenset(
        {"payer", "payee", "amount", "currency", "levels", "ttl_s", "tokens", "tags", "rate"}
    ),
    "capture": frozenset({"transfer", "amount", "currency", "tokens", "tags"}),
    "void": frozenset({"transfer", "tags"}),
    "cap": frozenset({"level", "amount"}),
    "refund": frozenset({"transfer", "amount", "tags"}),
    "budget": frozenset({"budget"}),
    "limit": frozenset({"limit"}),
    "transfer": frozenset({"payer", "payee", "amount", "currency", "tags"}),
    "tick": frozenset(),
}
_OPERATOR_FIELDS = {"budget": "budget", "limit": "limit"}  # field → the operator op that owns it
_CLOCK_FIELDS = ("at", "clock", "now", "time")
_DEFAULTS = {
    f.name: f.default_factory() if f.default is msgspec.NODEFAULT else f.default
    for f in msgspec.structs.fields(Op)
    if f.name not in ("kind", "id")
}


class WireOp(Op, forbid_unknown_fields=True):
    """An operation as it arrives over the wire: the journal's `Op`, refusing unknown fields."""


_decode = msgspec.json.Decoder(WireOp).decode


def decode_request(subject_op: str, data: bytes) -> Op:
    """The request on `<prefix>.svc.ledger.<subject_op>`, checked; raises a refusal naming the
    problem (LedgerError for a malformed request, PermissionDenied for an operator's operation
    or field sent where an agent may send)."""
    try:
        op = _decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        for name in _CLOCK_FIELDS:
            if f"unknown field `{name}`" in text:
                raise LedgerError(
                    f"a ledger request may not carry a time (`{name}`): the ledger keeps its own "
                    "clock and no client sets it; remove the field"
                ) from None
        raise LedgerError(f"bad ledger request: {text}") from None
    except msgspec.DecodeError as exc:
        raise LedgerError(f"bad ledger request: {exc}") from None
    check_request(subject_op, op)
    return op


def check_request(subject_op: str, op: Op) -> None:
    """Refuse an operation sent to another operation's subject, or carrying fields that are not
    its own (an operator's field on an agent's operation is a PermissionDenied)."""
    if op.kind != subject_op:
        if op.kind in OPERATOR_OPS and subject_op in AGENT_OPS:
            raise PermissionDenied(
                f"`{op.kind}` is an operator operation and cannot arrive on the agent subject "
                f"`ledger.{subject_op}`; an operator sends it to `ledger.{op.kind}`"
            )
        raise LedgerError(
            f"operation kind {op.kind!r} sent to {subject_op!r}; send each operation to its own "
            "subject"
        )
    allowed = FIELDS[op.kind]
    for name, default in _DEFAULTS.items():
        if name in allowed or getattr(op, name) == default:
            continue
        owner = _OPERATOR_FIELDS.get(name)
        if owner is not None:
            raise PermissionDenied(
                f"a {op.kind} request may not carry `{name}`: only an operator sets it, on "
                f"`ledger.{owner}` (`relaybus ledger {'budget' if owner == 'budget' else 'rate'}"
                " …`)"
            )
        raise LedgerError(
            f"a {op.kind} request may not carry `{name}`; its fields are "
            f"{', '.join(sorted(allowed)) or 'only kind and id'}"
        )
