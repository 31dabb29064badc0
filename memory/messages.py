"""Requests to `<prefix>.svc.memory.<op>` (JSON).

Every tenant operation (`AGENT_OPS`) carries the caller's delegation chain: the service takes the
tenant from the verified chain's principal, never from a field the caller sets. Without identity
(development only) no chain can be verified and the caller's `principal` is used; with identity
on, a request without a chain, or with one that does not verify, is refused (`ChainInvalid`).

Cross-tenant maintenance (`OPERATOR_OPS`: a garbage-collection pass or stats over every tenant)
has subjects of its own that only operator and service connections may publish to."""

from __future__ import annotations

from typing import Annotated

import msgspec

from relaybus.bus import Link

NonNegative = Annotated[float, msgspec.Meta(ge=0)]

AGENT_OPS: tuple[str, ...] = (
    "remember",
    "recall",
    "forget",
    "history",
    "ingest",
    "search_docs",
    "session",
    "gc",
    "stats",
)
"""The memory subject tokens an agent process may send: exactly the tenant-scoped operations,
each of which needs the caller's verified chain. `relaybus.services.identity.natsconfig` builds every
agent's NATS publish permissions from this list (`<prefix>.svc.memory.<op>` for each op), so an
operation missing here is unreachable for agents, and nothing operator-only may be added."""

OPERATOR_OPS: tuple[str, ...] = ("admin_gc", "admin_stats")
"""Cross-tenant maintenance: operator and service connections only (never in AGENT_OPS)."""


class Caller(msgspec.Struct, kw_only=True):
    run_id: str
    agent: str
    principal: str = ""
    chain: list[Link] = []


class Remember(msgspec.Struct, kw_only=True):
    caller: Caller
    text: str
    kind: str = "fact"
    key: str = ""  # facts with the same key supersede each other (history is kept)
    metadata: dict[str, str] = {}


class Recall(msgspec.Struct, kw_only=True):
    caller: Caller
    query: str
    k: int = 5
    kind: str = ""
    as_of: float = 0.0  # 0: current facts only


class Forget(msgspec.Struct, kw_only=True):
    caller: Caller
    ids: list[str] | None = None
    kind: str = ""


class History(msgspec.Struct, kw_only=True):
    caller: Caller
    key: str


class Ingest(msgspec.Struct, kw_only=True):
    """One step of ingesting `text` as `source`: the service embeds the chunks not yet stored,
    at most `limit` of them and for about `budget_s` (0: no bound), stores them, and replies
    with how many are still `pending`. The same request again continues where it stopped; once
    nothing is pending, chunks of an earlier version of the source are removed."""

    caller: Caller
    collection: str
    source: str
    text: str
    limit: Annotated[int, msgspec.Meta(ge=0)] = (
        0  # new chunks embedded in this step (the service caps it at 64; 0: that cap)
    )
    budget_s: NonNegative = (
        0.0  # stop embedding once this long has passed (capped at 2 s; 0: the cap)
    )


class SearchDocs(msgspec.Struct, kw_only=True):
    caller: Caller
    query: str
    k: int = 5
    collection: str = ""


class Gc(msgspec.Struct, kw_only=True):
    """The policy of one garbage-collection pass over every tenant (`admin_gc`, operator only);
    the service's background pass uses the RELAYBUS_MEMORY_* policy."""

    dry_run: bool = True
    retention_s: NonNegative = 30 * 86400.0  # superseded facts are kept this long
    ttl_s: dict[str, NonNegative] = {}  # per kind: memories older than this go
    cap: Annotated[int, msgspec.Meta(ge=0)] = 0  # current memories kept per tenant; 0: no cap
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = (
        30 * 86400.0
    )  # strength = seen x 0.5 ** (age / half-life)
    duplicate_score: Annotated[float, msgspec.Meta(ge=0, le=1)] = (
        0.0  # fold near-duplicates at or above this cosine; 0: off
    )


class TenantGc(Gc, kw_only=True):
    """`gc`: one pass over the caller's own tenant only (`memory/write`; `memory/read` for a
    dry run). `caller` is optional here only so that its absence gets a clear refusal."""

    caller: Caller | None = None


class Stats(msgspec.Struct, kw_only=True):
    """`stats`: what the caller's own tenant stores (`memory/read`)."""

    caller: Caller | None = None


class Turn(msgspec.Struct, kw_only=True):
    role: str
    text: str
    at: float = 0.0


class SessionOp(msgspec.Struct, kw_only=True):
    """Short-term state of one session (a run or a conversation) of the caller's tenant."""

    caller: Caller
    session: str
    action: str  # get | put | append | window | close
    state: dict[str, str] = {}
    turn: Turn | None = None
    last: int = 20


REQUESTS: dict[str, type | None] = {
    "remember": Remember,
    "recall": Recall,
    "forget": Forget,
    "history": History,
    "ingest": Ingest,
    "search_docs": SearchDocs,
    "session": SessionOp,
    "gc": TenantGc,
    "stats": Stats,
    "admin_gc": Gc,
    "admin_stats": None,
    "ping": None,
}
"""The request body of each `<prefix>.svc.memory.<op>` (None: the body is ignored)."""
