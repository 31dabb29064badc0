"""Who and what the seed scenario needs: its agents, the demo user, a budget, the prices.

Registering is idempotent: running the demo again against a kept stack reuses what is there.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from relaybus.bus import Bus
from relaybus.services.identity.client import (
    IdentityClient,
    agent_key_path,
    read_agent_key,
    write_agent_key,
)
from relaybus.services.identity.natsconfig import read_nkey, write_nkey
from relaybus.services.ledger.client import Budget, LedgerClient

DEMO_USER = "dana"
TEAM_DOMAIN = "team.example"
TEAM = ["ana@team.example", "ben@team.example"]
INJECTED_ADDRESS = "intel@rival.example"  # what the poisoned corpus document asks for
COMPETITORS = ["acme", "globex", "initech"]
USER_BUDGET = 5_000_000  # micro-units a month (5 USD)
RUN_BUDGET = 500_000  # micro-units per run (0.50 USD)
PRICES = Path(__file__).parent / "prices.toml"
TOKEN_FILE = "demo-token"  # the demo user's token, under RELAYBUS_HOME (mode 0600)

#: agent -> (scopes it may ever hold, agents it may delegate to)
AGENTS: dict[str, tuple[list[str], list[str]]] = {
    "orchestrator": (["memory", "email/send", "code/run"], ["research", "writer", "email"]),
    "research": (["memory"], []),
    "writer": (["code/run"], []),
    "email": (["email/send"], []),
}
SPECS = {
    "orchestrator": "relaybus.agents.demo.agents:Orchestrator",
    "research": "relaybus.agents.demo.agents:Research",
    "writer": "relaybus.agents.demo.agents:Writer",
    "email": "relaybus.agents.demo.agents:Mailer",
}
ROLE = "analyst"
ROLE_SCOPES = [
    "memory",
    f"email/send:recipient_domain={TEAM_DOMAIN}",
    "code/run:max_cpu_seconds=5,max_memory_mb=256",
]


def request_payload(
    competitors: list[str] | None = None, recipients: list[str] | None = None
) -> dict[str, object]:
    return {
        "request": "Compile a competitive analysis of our main competitors and send it to my team.",
        "competitors": competitors or COMPETITORS,
        "recipients": recipients or TEAM,
        "subject": "Competitive analysis",
    }


def write_prices(home: Path, model: str) -> Path:
    """The demo's price table under `home`, with a price for `model` if the table has none."""
    text = PRICES.read_text()
    if model not in tomllib.loads(text).get("models", {}):
        text += f'\n[models."{model}"]\ninput = 2\noutput = 8\n'
    path = home / "prices.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def register_demo(bus: Bus, home: Path) -> str:
    """Register the agents, the analyst role and the demo user; set the user's monthly budget.
    Returns a fresh API token for the user."""
    identity = IdentityClient(bus)
    for name, (scopes, handoff_to) in AGENTS.items():
        if agent_key_path(home, name).exists():
            key = read_agent_key(home, name)
        else:
            key = write_agent_key(home, name)
        nkey = read_nkey(home, name) or write_nkey(home, name)
        await identity.add_agent(name, key.verify_key, scopes, handoff_to, nkey)
    await identity.add_role(ROLE, ROLE_SCOPES)
    await identity.add_user(DEMO_USER, [], [ROLE])
    await LedgerClient(bus).set_budget(
        f"demo-budget-{DEMO_USER}",
        Budget(level=f"user:{DEMO_USER}", limit=USER_BUDGET, period="monthly"),
    )
    return (await identity.issue_token(DEMO_USER))["token"]
