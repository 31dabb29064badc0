"""What may arrive on `<prefix>.svc.ledger.<op>`, and from whom.

Every operation has its own subject token. `AGENT_OPS` are the ones an agent process sends;
everything else (`OPERATOR_OPS`, `OPERATOR_QUERIES`) is for operators and services only.
services/identity/natsconfig.py builds each agent's NATS publish permissions from `AGENT_OPS`,
so an agent's connection cannot even reach an operator operation's subject. The service checks
the request's shape as well (`decode_request`: each subject decodes only its own operation's
Struct, refusing unknown fields), so a request on an agent subject can never do what belongs to
an operator — for example, set a budget by carrying a `budget` field.

No request carries a time: the ledger keeps its own clock (tests inject one into
`LedgerWriter(clock=…)`, never over the wire). A request with an `at` field is refused.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relaybus.bus import PermissionDenied, RelayError
from relaybus.services.ledger.errors import LedgerError

from .model import PAYMENT_LEVEL
from .ops import OP_TYPES, Op

__all__ = [
    "AGENT_OPS",
    "BATCHED",
    "MAX_BATCH",
    "OPERATOR_OPS",
    "OPERATOR_QUERIES",
    "PAYMENT_LEVEL",
    "WRITES",
    "batch_schema",
    "decode_batch",
    "decode_request",
    "request_schema",
]

AGENT_OPS: tuple[str, ...] = ("hold", "capture", "void", "cap", "run_cost", "batch")
"""The ledger subject tokens (`<prefix>.svc.ledger.<op>`) an agent process legitimately sends:
`hold` / `capture` / `void` for costed steps, LLM calls and payments (a budget lease is a hold
too), `cap` to narrow its run's payment levels (`payrun:…`: never to raise them), and the one
query the runtime needs, `run_cost` (a run's cost, tokens and payments), and `batch`: holds,
captures and voids sent together (`BATCHED`), each checked as if it came alone.
services/identity/natsconfig.py builds every agent's NATS publish permissions from this tuple
(`<prefix>.svc.ledger.<op>` for each op, nothing else under `svc.ledger`): budgets, rate limits, refunds, transfers, the clock and every
account-wide query (balances, holds, levels, other users' statements) are operator-only."""

OPERATOR_OPS: tuple[str, ...] = ("budget", "limit", "refund", "transfer", "tick")
"""Writes only an operator (or a service such as the payment webhook receiver) may send."""

OPERATOR_QUERIES: tuple[str, ...] = ("balance", "holds", "levels", "statement", "ping")
"""Reads across accounts and users: operators, the console and supervisors only."""

WRITES: tuple[str, ...] = ("hold", "capture", "void", "cap", *OPERATOR_OPS)

BATCHED: tuple[str, ...] = ("hold", "capture", "void")
"""What `ledger.batch` carries: a JSON array of these operations, each with its `kind`."""

MAX_BATCH = 1024

_OPERATOR_FIELDS = {"budget": "budget", "limit": "limit"}  # field → the operator op that owns it
_CLOCK_FIELDS = ("at", "clock", "now", "time")


def _strict(op_type: type) -> type:
    """`op_type` refusing unknown fields: the wire is strict, the journal reads what it wrote."""
    return type(
        op_type.__name__, (op_type,), {"__doc__": op_type.__doc__}, forbid_unknown_fields=True
    )


_WIRE_TYPES: dict[str, type] = {kind: _strict(t) for kind, t in OP_TYPES.items()}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(t) for kind, t in _WIRE_TYPES.items()
}
_probe = msgspec.json.Decoder(dict[str, Any]).decode


def decode_request(subject_op: str, data: bytes) -> Op:
    """The request on `<prefix>.svc.ledger.<subject_op>`: that operation's fields as JSON
    (`kind` may be left out; if present it must name the subject's operation). Raises a refusal
    naming the problem: LedgerError for a malformed request, PermissionDenied for an operator's
    operation or field sent where an agent may send."""
    decoder = _DECODERS.get(subject_op)
    if decoder is None:
        raise LedgerError(
            f"unknown ledger operation {subject_op!r}; the operations are {', '.join(WRITES)}"
        )
    try:
        op: Op = decoder.decode(data)
    except msgspec.ValidationError as exc:
        _explain(subject_op, data)
        raise LedgerError(f"bad {subject_op} request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise LedgerError(f"bad ledger request: {exc}") from None
    return op


def request_schema(subject_op: str) -> dict[str, Any]:
    """The JSON schema of a request on `<prefix>.svc.ledger.<subject_op>`: a write's own fields
    and no others (`kind` may be left out), or a query's optional string parameters."""
    wire_type = _WIRE_TYPES.get(subject_op)
    if wire_type is None:
        return msgspec.json.schema(dict[str, str | None])
    schema = msgspec.json.schema(wire_type)
    fields = schema["$defs"][wire_type.__name__]
    fields["required"] = [name for name in fields["required"] if name != "kind"]
    return schema


def _explain(subject_op: str, data: bytes) -> None:
    """Raise the refusal that says why a body that is JSON but not a `subject_op` was sent:
    another operation's kind, an operator's field, or a time. Returns when none applies."""
    try:
        body = _probe(data)
    except msgspec.MsgspecError:
        return
    kind = body.get("kind")
    if isinstance(kind, str) and kind != subject_op:
        if kind in OPERATOR_OPS and subject_op in AGENT_OPS:
            raise PermissionDenied(
                f"`{kind}` is an operator operation and cannot arrive on the agent subject "
                f"`ledger.{subject_op}`; an operator sends it to `ledger.{kind}`"
            )
        raise LedgerError(
            f"operation kind {kind!r} sent to {subject_op!r}; send each operation to its own "
            "subject"
        )
    fields = {f.name for f in msgspec.structs.fields(OP_TYPES[subject_op])}
    for name in body:
        if name in fields or name in ("kind", "id"):
            continue
        if name in _CLOCK_FIELDS:
            raise LedgerError(
                f"a ledger request may not carry a time (`{name}`): the ledger keeps its own "
                "clock and no client sets it; remove the field"
            )
        owner = _OPERATOR_FIELDS.get(name)
        if owner is not None and owner != subject_op:
            raise PermissionDenied(
                f"a {subject_op} request may not carry `{name}`: only an operator sets it, on "
                f"`ledger.{owner}` (`relaybus ledger {'budget' if owner == 'budget' else 'rate'}"
                " …`)"
            )
        raise LedgerError(
            f"a {subject_op} request may not carry `{name}`; its fields are "
            f"{', '.join(sorted(fields)) or 'only kind and id'}"
        )


_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


def decode_batch(data: bytes) -> list[tuple[Op | RelayError, str]]:
    """A `ledger.batch` request: a JSON array of holds, captures and voids, each with its `kind`
    (and the `traceparent` of the task that asked, if it is traced). Each decodes as if it
    arrived on its own subject (`decode_request`); what does not is that item's refusal, and
    the others go on. A body that is not such an array is refused whole."""
    try:
        raws = _items(data)
    except msgspec.MsgspecError as exc:
        raise LedgerError(f"bad ledger batch: a JSON array of operations, {exc}") from None
    if len(raws) > MAX_BATCH:
        raise LedgerError(f"a ledger batch holds at most {MAX_BATCH} operations, not {len(raws)}")
    items: list[tuple[Op | RelayError, str]] = []
    for raw in raws:
        try:
            body = _probe(raw)
        except msgspec.MsgspecError:
            items.append(
                (LedgerError("bad ledger batch item: each is a JSON object with `kind`"), "")
            )
            continue
        traceparent = body.pop("traceparent", "")
        if not isinstance(traceparent, str) or len(traceparent) > 128:
            traceparent = ""
        item = bytes(raw) if "traceparent" not in body and not traceparent else None
        kind = body.get("kind")
        if kind not in BATCHED:
            refusal: RelayError = (
                PermissionDenied(
                    f"`{kind}` cannot be batched: a batch carries {', '.join(BATCHED)}; an "
                    f"operator sends `{kind}` to `ledger.{kind}`"
                )
                if kind in OPERATOR_OPS
                else LedgerError(
                    f"a ledger batch item needs `kind`, one of {', '.join(BATCHED)} (got {kind!r})"
                )
            )
            items.append((refusal, traceparent))
            continue
        try:
            encoded = item if item is not None else msgspec.json.encode(body)
            items.append((decode_request(str(kind), encoded), traceparent))
        except RelayError as exc:
            items.append((exc, traceparent))
    return items


def batch_schema() -> dict[str, Any]:
    """The JSON schema of `ledger.batch`: an array of holds, captures and voids."""
    hold, capture, void = (_WIRE_TYPES[k] for k in BATCHED)
    return msgspec.json.schema(list[hold | capture | void])  # type: ignore[valid-type]
