"""Agent2Agent (A2A v1.0, with the a2a-sdk): serve relaybus agents to other vendors' agents
(`relaybus a2a serve`, server.py) and call remote A2A agents from inside a relaybus agent as
tools (`[a2a.NAME]` in the data-sources file, remote.py). The delegation chain travels in an A2A
extension (extension.py). See docs/a2a.md."""

from .extension import DELEGATION_URI, Delegation, read_delegation

__all__ = ["DELEGATION_URI", "Delegation", "read_delegation"]
