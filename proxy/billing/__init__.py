"""Tenants and money: keys, the store that holds them, and (later) limits and the ledger."""
