"""`relaybus console`: a local web app over the events stream, run records, journal, ledger,
dead letters and audit — live handoffs, run graphs, costs, dead letters and approvals."""
