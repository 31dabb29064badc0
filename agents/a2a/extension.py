"""The delegation extension: a relaybus agent calling a remote A2A agent says on whose behalf.

The message's metadata holds, under the extension's URI, the caller's verified delegation chain
as it travels on the bus (each link's signed body, signature and identity-service stamp, base64)
and a readable summary of it. The caller also lists the URI in the `A2A-Extensions` header.

    {"https://relaybus.dev/a2a/ext/delegation/v1": {
        "principal": "user:alice", "run_id": "…", "task_id": "…", "agent": "planner",
        "path": ["user:alice", "agent:planner"],
        "links": [{"payload": "…", "signature": "…", "stamp": "…"}]}}

The chain is evidence, not a credential: a receiving relaybus server records it with the call
(audit) but authorizes only the caller's bearer token.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from relaybus.bus import Link
from relaybus.services.identity.chain import decode_body

DELEGATION_URI = "https://relaybus.dev/a2a/ext/delegation/v1"
MAX_LINKS = 32


class Delegation(msgspec.Struct, frozen=True, kw_only=True):
    """The extension's content, as it is put in (and read back from) message metadata."""

    principal: str
    run_id: str
    task_id: str
    agent: str
    path: list[str]
    links: list[dict[str, str]]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def delegation_of(
    chain: tuple[Link, ...], *, principal: str, run_id: str, task_id: str, agent: str
) -> Delegation:
    """The extension for a call made by `agent` in task `task_id` carrying `chain` (the root
    link's issuer, `user:ID`, first; each delegated agent after it)."""
    bodies = [decode_body(link.payload) for link in chain]
    path = [bodies[0].issuer] if bodies else [_as_user(principal)]
    for body in bodies:
        if path[-1] != f"agent:{body.subject}":
            path.append(f"agent:{body.subject}")
    if path[-1] != f"agent:{agent}":
        path.append(f"agent:{agent}")
    links = [
        {"payload": _b64(k.payload), "signature": _b64(k.signature), "stamp": _b64(k.stamp)}
        for k in chain
    ]
    return Delegation(
        principal=_as_user(principal),
        run_id=run_id,
        task_id=task_id,
        agent=agent,
        path=path,
        links=links,
    )


def _as_user(principal: str) -> str:
    return principal if ":" in principal else f"user:{principal}"


def as_metadata(delegation: Delegation) -> dict[str, Any]:
    return {DELEGATION_URI: msgspec.to_builtins(delegation)}


def read_delegation(metadata: dict[str, Any]) -> Delegation | None:
    """The extension in a message's metadata; None if absent or not of its shape (it is
    evidence for the audit trail, never a reason to refuse or allow a call)."""
    found = metadata.get(DELEGATION_URI)
    if not isinstance(found, dict):
        return None
    try:
        delegation = msgspec.convert(found, Delegation)
    except msgspec.ValidationError:
        return None
    if len(delegation.links) > MAX_LINKS or len(delegation.path) > MAX_LINKS + 2:
        return None
    return delegation
