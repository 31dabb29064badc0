"""The demo data source: a competitor-pricing table in SQLite, rows for two tenants.

python -m relaybus.agents.tools.demo .relaybus/data/pricing.db
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

ROWS = [
    # tenant, competitor, product, plan, price_usd, updated
    ("alice", "acme", "widgetpro", "team", 49.0, "2026-10-01"),
    ("alice", "acme", "widgetpro", "enterprise", 199.0, "2026-10-01"),
    ("alice", "globex", "cloudnine", "team", 39.0, "2026-09-15"),
    ("alice", "globex", "cloudnine", "enterprise", 149.0, "2026-09-15"),
    ("alice", "initech", "databox", "team", 59.0, "2026-11-02"),
    ("bob", "hooli", "pipewise", "team", 29.0, "2026-08-20"),
    ("bob", "hooli", "pipewise", "enterprise", 129.0, "2026-08-20"),
    ("bob", "acme", "widgetpro", "team", 45.0, "2026-10-12"),
]


def build_pricing_db(path: Path) -> Path:
    """(Re)create the demo database at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE competitor_prices (tenant TEXT NOT NULL, competitor TEXT, product TEXT,"
            " plan TEXT, price_usd REAL, updated TEXT, internal_note TEXT)"
        )
        conn.executemany(
            "INSERT INTO competitor_prices VALUES (?, ?, ?, ?, ?, ?, 'source: sales call')", ROWS
        )
        conn.execute("CREATE TABLE api_keys (name TEXT, secret TEXT)")
        conn.execute("INSERT INTO api_keys VALUES ('billing', 'sk-live-do-not-leak')")
    conn.close()
    return path


if __name__ == "__main__":
    print(build_pricing_db(Path(sys.argv[1] if len(sys.argv) > 1 else "pricing.db")))
