"""Auth and metering: tenants, API keys, and the usage ledger (one process)."""
