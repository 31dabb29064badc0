"""Delegation chains: link bodies, signatures, and the verification every consumer runs.

A chain is user → agent A → agent B …, root first. Each link body is a msgspec Struct
encoded once; signatures cover those exact bytes behind a domain-separation prefix. A link's
id hashes the body only (Ed25519 signatures are malleable), and each link names the hash of
its parent's body (`prev`), its run, a validity window, a nonce and a re-delegation budget.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from relaybus.bus import Link
from relaybus.bus.codec import decode_or_refuse

from .errors import ChainInvalid
from .scopes import Scope, all_narrow

LINK_DOMAIN = b"relaybus/link/v1\x00"
STAMP_DOMAIN = b"relaybus/stamp/v1\x00"
CLOCK_SKEW_S = 5.0
DEFAULT_DEPTH = 8


class LinkBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a link grants: `issuer` (user:ID or agent:NAME) gives `subject` (an agent) `scopes`
    within run `run_id`, from `nbf` to `exp`, for `principal`, with `depth` re-delegations left."""

    run_id: str
    issuer: str
    subject: str
    principal: str
    scopes: tuple[Scope, ...]
    nbf: float
    exp: float
    depth: int
    nonce: str
    prev: bytes = b""
    v: int = 1
    task: str = ""  # the task this link authorizes (its envelope id) ...
    digest: bytes = b""  # ... and a digest of that task's payload: a link is good for one task
    line: bool = False  # the task carries the run's own line (the root, or a handoff on it),
    # not a child call: only its holder may start, finish or reopen the run


_encode = msgspec.msgpack.Encoder().encode
_body_decoder = msgspec.msgpack.Decoder(LinkBody)


def payload_digest(payload: bytes) -> bytes:
    """What a link binds of its task's payload."""
    return hashlib.blake2b(payload, digest_size=16).digest()


def link_id(payload: bytes) -> str:
    """The id of a link: a hash of its body only, never of a (malleable) signature."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def key_id(public: bytes) -> str:
    return hashlib.blake2b(public, digest_size=8).hexdigest()


def new_nonce() -> str:
    return os.urandom(12).hex()


def sign_body(body: LinkBody, key: SigningKey) -> tuple[bytes, bytes]:
    payload = _encode(body)
    return payload, key.sign(LINK_DOMAIN + payload).signature


def stamp_payload(payload: bytes, service_key: SigningKey) -> bytes:
    return service_key.sign(STAMP_DOMAIN + payload).signature


def _shown(name: str) -> str:
    """A name from a link body, fit for a one-line message: as it is when printable, else
    quoted with escapes (a forged body can carry newlines or terminal control codes)."""
    return name if name.isprintable() and name.strip() == name else repr(name)


def decode_body(payload: bytes) -> LinkBody:
    return decode_or_refuse(_body_decoder, payload, ChainInvalid, "a link body does not decode")


def child_body(
    parent: LinkBody,
    parent_payload: bytes,
    *,
    issuer_agent: str,
    subject: str,
    scopes: Sequence[Scope] | None,
    ttl_s: float | None = None,
    task: str = "",
    digest: bytes = b"",
    line: bool = False,
) -> LinkBody:
    """The body of a delegation from the holder of `parent` to `subject`, never wider."""
    now = time.time()
    exp = parent.exp if ttl_s is None else min(parent.exp, now + ttl_s)
    return LinkBody(
        run_id=parent.run_id,
        issuer=f"agent:{issuer_agent}",
        subject=subject,
        principal=parent.principal,
        scopes=tuple(scopes) if scopes is not None else parent.scopes,
        nbf=now,
        exp=exp,
        depth=parent.depth - 1,
        nonce=new_nonce(),
        prev=hashlib.blake2b(parent_payload, digest_size=16).digest(),
        task=task,
        digest=digest,
        line=line and parent.line,
    )


@dataclass
class ChainView:
    """A verified chain, decoded."""

    links: list[LinkBody]
    ids: list[str]

    @property
    def principal(self) -> str:
        return self.links[0].principal

    @property
    def last(self) -> LinkBody:
        return self.links[-1]


KeyLookup = Callable[[str], VerifyKey | None]
MEMO_LINKS = 100_000  # verified links remembered per process (about 25 MB at most)
"""agent name → its registered delegation key (None if unknown or revoked)."""


@dataclass
class ChainVerifier:
    """Verifies chains against the identity service's key and the agent registry.

    Signature checks are memoized by link id: a link's body is immutable and its id hashes it,
    so a verified (id, signature, stamp) stays verified. Time, run binding, narrowing and
    revocation are re-checked every time (they are cheap). The memo keeps the latest
    `MEMO_LINKS` links (a process verifying millions of runs does not grow without end)."""

    service_key: VerifyKey
    agent_key: KeyLookup
    is_revoked: Callable[[str], bool] = lambda _key: False
    _verified: dict[tuple[str, bytes, bytes], None] = field(default_factory=dict)

    def vouch(self, link: Link) -> None:
        """Take `link` as verified: this process signed and stamped it itself (the identity
        service's root links, which its run authority checks next)."""
        self._remember((link_id(link.payload), link.signature, link.stamp))

    def _remember(self, memo: tuple[str, bytes, bytes]) -> None:
        self._verified[memo] = None
        if len(self._verified) > MEMO_LINKS:
            del self._verified[next(iter(self._verified))]  # the oldest

    def verify(
        self,
        chain: Sequence[Link],
        run_id: str,
        recipient: str,
        now: float | None = None,
        *,
        task: tuple[str, bytes] | None = None,
    ) -> ChainView:
        """The chain decoded, if it lets `recipient` act in `run_id`; with `task` (its id and
        payload), only if the last link authorizes exactly that task and payload."""
        if not chain:
            raise ChainInvalid(
                "the message carries no delegation chain; publish through the identity service"
            )
        now = time.time() if now is None else now
        bodies: list[LinkBody] = []
        ids: list[str] = []
        for index, link in enumerate(chain):
            body = decode_body(link.payload)
            lid = link_id(link.payload)
            where = f"link {index} ({_shown(body.issuer)} → {_shown(body.subject)})"
            if index == 0 and (not body.issuer.startswith("user:") or body.prev):
                raise ChainInvalid(f"{where}: the first link must be a root issued to a user's run")
            self._check_signatures(link, body, lid, index, where)
            if body.run_id != run_id:
                raise ChainInvalid(f"{where} belongs to run {_shown(body.run_id)}, not {run_id}")
            if not body.nbf - CLOCK_SKEW_S <= now <= body.exp + CLOCK_SKEW_S:
                state = "not valid yet" if now < body.nbf else "expired"
                raise ChainInvalid(f"{where} is {state}")
            for key in (
                f"link:{lid}",
                body.issuer,
                f"agent:{body.subject}",
                f"user:{body.principal}",
            ):
                if self.is_revoked(key):
                    raise ChainInvalid(f"{where}: {_shown(key)} is revoked")
            if index > 0:
                self._check_delegation(bodies[-1], chain[index - 1].payload, body, where)
            bodies.append(body)
            ids.append(lid)
        if bodies[-1].subject != recipient:
            raise ChainInvalid(
                f"the chain ends at {bodies[-1].subject}, but the message is for {recipient}"
            )
        if task is not None:
            task_id, payload = task
            last = bodies[-1]
            if last.task != task_id or last.digest != payload_digest(payload):
                raise ChainInvalid(
                    f"the chain's last link authorizes task {last.task or '(none)'} with another "
                    f"payload, not task {task_id} as sent: a chain is bound to the one task and "
                    "payload it was issued for (publish a new task through the identity service)"
                )
        return ChainView(links=bodies, ids=ids)

    def _check_signatures(
        self, link: Link, body: LinkBody, lid: str, index: int, where: str
    ) -> None:
        memo = (lid, link.signature, link.stamp)
        if memo in self._verified:
            return
        try:
            self.service_key.verify(STAMP_DOMAIN + link.payload, link.stamp)
        except (BadSignatureError, ValueError, TypeError):
            raise ChainInvalid(f"{where}: the identity service's stamp does not verify") from None
        if index == 0:
            signer = self.service_key
        else:
            agent = body.issuer.removeprefix("agent:")
            found = self.agent_key(agent) if body.issuer.startswith("agent:") else None
            if found is None:
                raise ChainInvalid(f"{where}: {_shown(body.issuer)} is not a registered agent")
            signer = found
        try:
            signer.verify(LINK_DOMAIN + link.payload, link.signature)
        except (BadSignatureError, ValueError, TypeError):
            raise ChainInvalid(f"{where}: the signature does not verify") from None
        self._remember(memo)

    @staticmethod
    def _check_delegation(
        parent: LinkBody, parent_payload: bytes, body: LinkBody, where: str
    ) -> None:
        if body.prev != hashlib.blake2b(parent_payload, digest_size=16).digest():
            raise ChainInvalid(
                f"{where} does not follow the link before it (truncated or reordered chain)"
            )
        if body.issuer != f"agent:{parent.subject}":
            raise ChainInvalid(
                f"{where}: {_shown(body.issuer)} delegates authority held by {_shown(parent.subject)}"
            )
        if body.principal != parent.principal:
            raise ChainInvalid(
                f"{where} switches the principal from {_shown(parent.principal)} to "
                f"{_shown(body.principal)}"
            )
        if body.line and not parent.line:
            raise ChainInvalid(f"{where} claims the run's line, which its parent does not hold")
        if body.exp > parent.exp:
            raise ChainInvalid(f"{where} extends the expiry past its parent's")
        if body.depth > parent.depth - 1 or parent.depth < 1:
            raise ChainInvalid(f"{where} exceeds the re-delegation depth budget")
        wider = all_narrow(body.scopes, parent.scopes)
        if wider is not None:
            raise ChainInvalid(
                f"{where} widens scope: {wider} is not within {', '.join(map(str, parent.scopes))}"
            )
