"""An agent's name becomes a file name under RELAYBUS_HOME/keys: a name that is a path (or a
pattern, or too long) is refused before any file is touched, so no `agent add` can write over
the identity service's signing key or anything else (tests/test_cli.py runs the command)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaybus.bus import RelayError
from relaybus.services.identity.client import agent_key_path, write_agent_key
from relaybus.services.identity.natsconfig import nkey_path, write_nkey

HOSTILE = ["../identity/service", "../../etc/x", "/abs/path", "a.b", "*", ">", "", "x" * 65]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_that_is_no_agent_name_never_becomes_a_key_path(tmp_path: Path, name: str) -> None:
    trust_root = tmp_path / "identity" / "service.seed"
    trust_root.parent.mkdir()
    trust_root.write_text("the trust root")
    for attempt in (
        lambda: agent_key_path(tmp_path, name),
        lambda: nkey_path(tmp_path, name),
        lambda: write_agent_key(tmp_path, name),
        lambda: write_nkey(tmp_path, name),
    ):
        with pytest.raises(RelayError, match=r"agent name .* is not allowed"):
            attempt()
    assert trust_root.read_text() == "the trust root"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [trust_root]
