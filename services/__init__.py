"""relaybus services: identity and ledger, each with a small client module for the runtime."""
