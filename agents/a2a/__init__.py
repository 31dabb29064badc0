"""Agent2Agent (A2A v1.0, with the a2a-sdk): serve relaybus agents to other vendors' agents
(`relaybus a2a serve`, server.py) and call remote A2A agents from inside a relaybus agent as
tools (`[a2a.NAME]` in the data-sources file, remote.py). The delegation chain travels in an A2A
extension (extension.py). See docs/a2a.md.

Errors (RelayError subclasses, with their fields):

    CallerUnauthorized       access.py  no bearer token, or one identity refused (HTTP 401)
    NotYourRun               runs.py    the run is not the caller's (A2A: task not found)
    RemoteAgentRefused       remote.py  a DataRefused: too large, not A2A, remote task failed
    RemoteAgentUnreachable   remote.py  an UpstreamFailed: connection, timeout, 5xx (retried)
"""

from .extension import DELEGATION_URI, Delegation, read_delegation

__all__ = ["DELEGATION_URI", "Delegation", "read_delegation"]
