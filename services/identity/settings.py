"""Identity's settings: read by the identity service and by every process that verifies callers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from relaybus.bus.settings import LayerSettings


class IdentitySettings(LayerSettings):
    """RELAYBUS_IDENTITY and RELAYBUS_IDENTITY_*."""

    identity: bool = False
    identity_max_root_ttl_s: float = Field(default=86_400.0, gt=0)  # longest a root link lives
    # the trust root's seed, the same file for every replica (default: identity/service.seed
    # under RELAYBUS_HOME)
    identity_seed_file: Path | None = None
