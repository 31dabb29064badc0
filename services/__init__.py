"""relaybus services: identity and ledger, each with a small client module for the runtime."""

if __name__ != "relaybus.services":  # the checkout's folder imported by its own name
    raise ImportError(
        "relaybus's services/ folder is the package relaybus.services: import relaybus.services, "
        "not services (`from relaybus import ...`; run its modules as `python -m relaybus.services...`)"
    )
