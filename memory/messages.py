"""Requests to `relay.svc.memory.<op>` (JSON). Each carries the caller's delegation chain: the
service takes the tenant from the verified chain, never from a field the caller sets (without
identity, in development, the run's principal is used)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from bus import Link

NonNegative = Annotated[float, msgspec.Meta(ge=0)]


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
    caller: Caller
    collection: str
    source: str
    text: str


class SearchDocs(msgspec.Struct, kw_only=True):
    caller: Caller
    query: str
    k: int = 5
    collection: str = ""


class Gc(msgspec.Struct, kw_only=True):
    """One garbage-collection pass; the service's background pass uses the RELAYBUS_MEMORY_* policy."""

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
