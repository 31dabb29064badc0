"""Demo agents shipped with relaybus (one agent per module)."""
