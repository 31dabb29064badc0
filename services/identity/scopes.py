"""Scopes: command paths with argument constraints, and the checks on them.

`email/send` with `{"recipient_domain": "team.example"}`; a parent path covers a child only
at a `/` boundary (`email` covers `email/send`, not `emailer`).

Constraint semantics against a tool call's arguments:
- `*_domain: D` — every e-mail address in the arguments (to, cc, bcc, recipient(s), reply_to)
  must be exactly at domain D; an address that does not parse cleanly is refused;
- a list — the argument (or each of its items) must be one of the listed values;
- an integer — the argument must be a number no greater than it;
- a string — the argument must equal it; `$principal` stands for the user the run acts for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email.utils import getaddresses
from typing import Any

import msgspec

from relaybus.bus import ConfigError

Constraint = str | int | list[str]
ADDRESS_FIELDS = ("to", "cc", "bcc", "recipient", "recipients", "reply_to")


class Scope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    path: str
    constraints: dict[str, Constraint] = {}

    def __str__(self) -> str:
        if not self.constraints:
            return self.path
        parts = [
            f"{k}={'|'.join(v) if isinstance(v, list) else v}"
            for k, v in sorted(self.constraints.items())
        ]
        return f"{self.path}:{','.join(parts)}"


def parse_scope(text: str) -> Scope:
    """`email/send:recipient_domain=team.example,max_amount=100,currency=EUR|USD`."""
    path, _, rest = text.strip().partition(":")
    if not path or path.startswith("/") or path.endswith("/") or "//" in path or " " in path:
        raise ConfigError(f"scope {text!r}: the path must look like 'email/send'")
    constraints: dict[str, Constraint] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"scope {text!r}: constraint {item!r} is not key=value")
        if "|" in value:
            constraints[key] = value.split("|")
        elif value.isdigit():
            constraints[key] = int(value)
        else:
            constraints[key] = value
    return Scope(path=path, constraints=constraints)


def covers_path(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent + "/")


def _at_least_as_strict(child: Constraint, parent: Constraint) -> bool:
    if isinstance(parent, list):
        items = child if isinstance(child, list) else [child]
        return all(isinstance(i, str) and i in parent for i in items)
    if isinstance(parent, int) and not isinstance(parent, bool):
        return isinstance(child, int) and child <= parent
    return child == parent


def narrows(child: Scope, parent: Scope) -> bool:
    """Whether `child` grants nothing `parent` does not."""
    if not covers_path(parent.path, child.path):
        return False
    return all(
        k in child.constraints and _at_least_as_strict(child.constraints[k], v)
        for k, v in parent.constraints.items()
    )


def all_narrow(children: Sequence[Scope], parents: Sequence[Scope]) -> Scope | None:
    """The first of `children` no parent covers, or None if every one narrows some parent."""
    for child in children:
        if not any(narrows(child, parent) for parent in parents):
            return child
    return None


def within(granted: Sequence[Scope], allowed: Sequence[Scope]) -> list[Scope]:
    """The part of `granted` that lies within `allowed`: a granted scope inside an allowed one
    as it is; one wider than an allowed scope becomes that allowed scope with both sides'
    constraints, the stricter value where both constrain the same key; one outside every
    allowed scope, or whose constraints cannot both hold, is dropped. Every scope returned
    narrows both a granted and an allowed one. A user's scopes within what the agent a run
    starts at may ever hold."""
    out: list[Scope] = []
    for have in granted:
        if any(narrows(have, allow) for allow in allowed):
            kept = [have]
        else:
            kept = []
            for allow in allowed:
                if not covers_path(have.path, allow.path):
                    continue
                merged = _both(have.constraints, allow.constraints)
                if merged is None:
                    continue
                candidate = Scope(path=allow.path, constraints=merged)
                if narrows(candidate, have) and narrows(candidate, allow):
                    kept.append(candidate)
        out.extend(k for k in kept if k not in out)
    return out


def _both(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """Constraints holding both `a` and `b`: on a shared key the stricter value; None when
    neither value is at least as strict as the other."""
    merged = {**a, **b}
    for key in a.keys() & b.keys():
        if _at_least_as_strict(a[key], b[key]):
            merged[key] = a[key]
        elif _at_least_as_strict(b[key], a[key]):
            merged[key] = b[key]
        else:
            return None
    return merged


def restrict(requested: Sequence[Scope], held: Sequence[Scope]) -> list[Scope]:
    """What a delegation asking for `requested` gets from someone holding `held`: each request
    within a held scope as asked; one that names a wider path or drops a constraint becomes the
    held scopes it overlaps (`email/send` from `email/send:recipient_domain=team.example` keeps
    the domain; `memory` from `memory/read` is `memory/read`). A request that overlaps nothing
    stays as asked, for the identity service to refuse with its reason."""
    out: list[Scope] = []
    for want in requested:
        if any(narrows(want, have) for have in held):
            granted = [want]
        else:
            granted = [
                Scope(path=want.path, constraints={**have.constraints, **want.constraints})
                if covers_path(have.path, want.path)
                else have
                for have in held
                if covers_path(have.path, want.path) or covers_path(want.path, have.path)
            ] or [want]
        out.extend(g for g in granted if g not in out)
    return out


def addresses(args: Mapping[str, Any]) -> list[str] | None:
    """Every e-mail address in the address fields, or None if one does not parse cleanly."""
    raw: list[str] = []
    for name in ADDRESS_FIELDS:
        value = args.get(name)
        if value is None:
            continue
        raw.extend(value if isinstance(value, list) else [value])
    if not all(isinstance(v, str) for v in raw):
        return None
    found: list[str] = []
    for value in raw:
        parsed = getaddresses([value])
        # Refuse what a lenient parser would quietly reinterpret: '@' in a display name,
        # or more '@' in the text than addresses found (a@evil.example@team.example).
        if not parsed or any(not addr or "@" in name for name, addr in parsed):
            return None
        if value.count("@") != len(parsed):
            return None
        for _, addr in parsed:
            local, at, domain = addr.rpartition("@")
            if not at or not local or "@" in local or not domain or addr.count("@") != 1:
                return None
            found.append(addr.lower())
    return found


def _satisfied(key: str, want: Constraint, args: Mapping[str, Any], principal: str) -> str:
    if key.endswith("_domain"):
        found = addresses(args)
        if found is None:
            return "an e-mail address does not parse cleanly"
        if not found:
            return "no recipient given"
        bad = [a for a in found if a.rsplit("@", 1)[1] != str(want).lower()]
        return f"{bad[0]} is outside {want}" if bad else ""
    if key.startswith("per_run_"):
        return ""  # a limit on the run's total, not on this call: the tool enforces it (ledger)
    if key.startswith("max_") and key not in args and key[4:] in args:
        key = key[4:]  # max_amount=100: the `amount` argument is at most 100
    if key not in args:
        return f"argument {key!r} is required by the scope"
    value = args[key]
    if isinstance(want, list):
        items = value if isinstance(value, list) else [value]
        bad_items = [i for i in items if i not in want]
        return f"{key}={bad_items[0]!r} is not one of {want}" if bad_items else ""
    if isinstance(want, int):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"{key} must be a number"
        if value <= want:
            return ""
        # NaN compares False with everything: it must not slip past the limit
        return f"{key}={value} is {'over' if value > want else 'not within'} the limit {want}"
    expected = principal if want == "$principal" else want
    return f"{key}={value!r} is not {expected!r}" if value != expected else ""


def run_limit(scopes: Sequence[Scope], action: str, key: str) -> int | None:
    """The tightest `per_run_<key>` limit among `scopes` covering `action`, or None."""
    limits = [
        v
        for s in scopes
        if covers_path(s.path, action) and isinstance(v := s.constraints.get(f"per_run_{key}"), int)
    ]
    return min(limits) if limits else None


def check(scopes: Sequence[Scope], action: str, args: Mapping[str, Any], principal: str) -> str:
    """'' if some scope allows `action` with these arguments, else why not."""
    reasons = []
    for scope in scopes:
        if not covers_path(scope.path, action):
            continue
        problems = [
            p for k, v in scope.constraints.items() if (p := _satisfied(k, v, args, principal))
        ]
        if not problems:
            return ""
        reasons.append(f"{scope}: {problems[0]}")
    if not reasons:
        return f"no scope covers {action}"
    return "; ".join(reasons)
