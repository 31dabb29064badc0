"""The ledger's operations: one msgspec Struct per operation, a tagged union on `kind`.

What arrives on `<prefix>.svc.ledger.<kind>` is that operation's fields as JSON (`kind` may be
left out: the subject names it). What the journal stores is the same Struct inside an `Entry`.
Each operation carries only its own fields, so a hold cannot smuggle a `budget` and a capture
has no `payer` to forge: the shape is the check, not a whitelist beside it.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "Budget",
    "Cap",
    "Capture",
    "Hold",
    "Op",
    "OpKind",
    "RateLimit",
    "Refund",
    "SetBudget",
    "SetRateLimit",
    "Tick",
    "Transfer",
    "Void",
]


class Budget(msgspec.Struct, kw_only=True, omit_defaults=True):
    level: str  # user:alice | run:RUN | agent:NAME
    limit: int = 0  # max cost in micro-units (0: unlimited)
    period: Literal["", "daily", "monthly"] = ""
    max_steps: int = 0
    max_tokens: int = 0


class RateLimit(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Requests and tokens per minute for one (agent, resource) key, e.g. `agent:research/tool:search`."""

    key: str
    rpm: int = 0
    tpm: int = 0


class _Op(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="kind"):
    id: str  # the idempotency key: a retry with the same id and body gets the first result

    @property
    def kind(self) -> str:
        return str(self.__struct_config__.tag)


class Hold(_Op, tag="hold"):
    """Reserve `amount` (and `tokens`) at every level in `levels` at once, or fail as a whole."""

    payer: str
    payee: str
    amount: int = 0  # micro-units; 0 only for a hold of tokens alone (an unpriced LLM call)
    currency: str = "USD"
    levels: list[str] = []  # budget levels the hold counts against
    ttl_s: float = 300.0
    tokens: int = 0  # reserved for the call's prompt and completion
    tags: dict[str, str] = {}  # cost allocation: run, agent, tool, model
    rate: str = ""  # the (agent, resource) key the hold counts against for rate limits
    # a partitioned ledger (partitions.py): the home part lists the partitions of its shares; a
    # share names its home's partition, reserves its levels only and moves no money
    shares: list[str] = []
    share: str = ""


class Capture(_Op, tag="capture"):
    """Settle hold `transfer` at `amount` (≤ what it holds); the rest is released."""

    transfer: str
    amount: int = 0
    currency: str = "USD"
    tokens: int = 0  # what the call actually used
    tags: dict[str, str] = {}


class Void(_Op, tag="void"):
    """Release hold `transfer` without spending anything."""

    transfer: str
    tags: dict[str, str] = {}
    # a partitioned ledger's client undoing the parts of a hold another partition refused: the
    # hold's id may then be placed again (a retry of a refused hold is decided afresh)
    undo: bool = False


class Cap(_Op, tag="cap"):
    """Narrow a run's payment level (`payrun:…`) to at most `amount`; never raises it."""

    level: str
    amount: int


class Refund(_Op, tag="refund"):
    """Operator: give back `amount` of captured transfer `transfer`; the budgets get it back."""

    transfer: str
    amount: int
    tags: dict[str, str] = {}


BUDGET_FIELDS = ("limit", "period", "max_steps", "max_tokens")


class SetBudget(_Op, tag="budget"):
    """Operator: set (or raise) a budget level's limits. With `only`, just those fields of
    `budget` are set and the level's others keep their values (`relaybus ledger budget
    user:alice --max-steps 10` leaves alice's cost limit as it was)."""

    budget: Budget
    only: list[str] = []  # a subset of BUDGET_FIELDS; empty: the whole budget is replaced


class SetRateLimit(_Op, tag="limit"):
    """Operator: requests and tokens per minute for an (agent, resource) key."""

    limit: RateLimit


class Transfer(_Op, tag="transfer"):
    """Operator: move `amount` from one account to another."""

    payer: str
    payee: str
    amount: int
    currency: str = "USD"
    tags: dict[str, str] = {}


class Tick(_Op, tag="tick"):
    """Operator: advance the ledger's clock, expiring lapsed holds."""


Op: TypeAlias = Hold | Capture | Void | Cap | Refund | SetBudget | SetRateLimit | Transfer | Tick
OpKind = Literal["hold", "capture", "void", "cap", "refund", "budget", "limit", "transfer", "tick"]
OP_TYPES: dict[str, type[_Op]] = {
    str(t.__struct_config__.tag): t
    for t in (Hold, Capture, Void, Cap, Refund, SetBudget, SetRateLimit, Transfer, Tick)
}
