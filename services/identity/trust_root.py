"""The identity service's trust root: one Ed25519 key that signs every stamp, whatever the
number of replicas. Each replica reads the same seed (a file, as any secret is mounted); the
registry holds its public key, written once with compare-and-set, so a replica started with
another key, or none, refuses to start instead of replacing the key every verifier trusts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nacl.signing import SigningKey

from relaybus.bus import ConfigError
from relaybus.bus.kv import RevisionConflict

from .registry import Registry


class TrustRootMismatch(ConfigError):
    """This replica's seed is not the trust root the registry names."""

    def __init__(self, seed_file: Path, have: str, trusted: str) -> None:
        super().__init__(
            f"the identity key in {seed_file} (public key {have[:16]}…) is not the trust root "
            f"every verifier uses ({trusted[:16]}…): start every identity replica with the "
            "first replica's seed (copy its identity/service.seed, or point "
            "RELAYBUS_IDENTITY_SEED_FILE at it). To replace the trust root instead (every "
            "delegation signed so far stops verifying), delete key _service from the agents "
            "bucket first"
        )
        self.seed_file, self.have, self.trusted = seed_file, have, trusted


class TrustRootSeedMissing(ConfigError):
    """The registry names a trust root and this replica has no seed: it must not mint one."""

    def __init__(self, seed_file: Path, trusted: str) -> None:
        super().__init__(
            f"the registry's trust root is {trusted[:16]}… and this identity replica has no "
            f"seed at {seed_file}: give it the first replica's seed (copy identity/service.seed "
            "or set RELAYBUS_IDENTITY_SEED_FILE); a replica never mints a key of its own once "
            "a trust root exists"
        )
        self.seed_file, self.trusted = seed_file, trusted


def _read_seed(path: Path) -> SigningKey | None:
    try:
        return SigningKey(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        return None


def _create_seed(path: Path) -> SigningKey:
    """A new seed at `path` (0600), written whole before it appears there (a temporary file
    linked into place, which fails if the name exists): replicas sharing a home that start
    together agree on the first one written, and none ever reads half a seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(key).hex().encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return SigningKey(bytes.fromhex(path.read_text().strip()))
        except OSError:  # a filesystem without hard links (SMB, some cloud file shares)
            return _create_exclusively(path, key)
    finally:
        temporary.unlink(missing_ok=True)
    return key


def _create_exclusively(path: Path, key: SigningKey) -> SigningKey:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SigningKey(bytes.fromhex(path.read_text().strip()))
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(key).hex().encode())
    return key


async def open_trust_root(registry: Registry, seed_file: Path) -> SigningKey:
    """The signing key this replica serves with, once it is the registry's trust root."""
    trusted = await registry.service_key()
    key = _read_seed(seed_file)
    if key is None:
        if trusted is not None:
            raise TrustRootSeedMissing(seed_file, bytes(trusted).hex())
        key = _create_seed(seed_file)
    if trusted is None:
        try:
            await registry.create_service_key(key.verify_key)
            return key
        except RevisionConflict:  # another replica published first
            trusted = await registry.service_key()
    have = bytes(key.verify_key).hex()
    if trusted is None or bytes(trusted).hex() != have:
        raise TrustRootMismatch(seed_file, have, bytes(trusted).hex() if trusted else "none")
    return key
