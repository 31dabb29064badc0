"""The ledger: budgets, holds and captures, refunds, statements (see docs/ledger.md)."""
