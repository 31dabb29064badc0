"""Whose memories a request may touch: the tenant, taken from the caller's delegation chain.

With identity on (RELAYBUS_IDENTITY=1) the tenant is the principal of the caller's *verified*
chain, and every link must allow the action (`memory/read` or `memory/write`); a request with
no chain, a chain that does not verify, or a `principal` field that disagrees with its chain is
refused (`ChainInvalid`), a link without the scope too (`PermissionDenied`). With identity off
(development only) nothing can be verified and the caller's `principal` names the tenant.
"""

from __future__ import annotations

from relaybus.bus import PermissionDenied
from relaybus.services.identity.client import IdentityGate
from relaybus.services.identity.errors import ChainInvalid
from relaybus.services.identity.scopes import check

from .messages import Caller

MAINTENANCE = {"gc": "admin_gc", "stats": "admin_stats"}


def _operator_hint(op: str) -> str:
    if op not in MAINTENANCE:
        return ""
    return (
        f"; `{op}` covers only the caller's own tenant — a pass over every tenant is the "
        f"operator's `{MAINTENANCE[op]}` (`relaybus memory {op}` without --as)"
    )


async def resolve_tenant(
    gate: IdentityGate | None, caller: Caller | None, action: str, op: str
) -> str:
    """The tenant `op` acts for, allowed `action` by every link of the caller's chain."""
    if gate is None:
        if caller is None or not caller.principal:
            raise PermissionDenied(
                f"memory {op} refused: no principal. Identity is off (development), so the "
                "tenant is the caller's `principal`: set it, or turn identity on "
                f"(RELAYBUS_IDENTITY=1) and send the caller's chain{_operator_hint(op)}"
            )
        return caller.principal.removeprefix("user:")
    if caller is None or not caller.chain:
        raise ChainInvalid(
            f"memory {op} refused: the request carries no delegation chain. With identity on, "
            "every memory operation acts for the principal of the caller's verified chain: "
            "agents call through ctx.memory (it sends their task's chain), the CLI takes "
            f"--as USER --token TOKEN{_operator_hint(op)}"
        )
    try:
        view = await gate.verify(caller.chain, caller.run_id, caller.agent)
    except ChainInvalid as exc:
        raise ChainInvalid(
            f"memory {op} refused: the caller's chain does not verify ({exc}); send the chain "
            "of the task being handled, unchanged (ctx.memory does)"
        ) from None
    named = caller.principal.removeprefix("user:")
    if named and named != view.principal:
        raise ChainInvalid(
            f"memory {op} refused: the request names principal {caller.principal!r} but its "
            f"chain acts for {view.principal!r}; the tenant always comes from the chain — "
            "leave `principal` empty or send that principal's own chain"
        )
    for index, link in enumerate(view.links):
        problem = check(link.scopes, action, {}, view.principal)
        if problem:
            raise PermissionDenied(
                f"memory {op}: {action} denied at link {index} ({link.issuer} → "
                f"{link.subject}): {problem}"
            )
    return view.principal
