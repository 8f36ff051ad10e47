"""Metrics (every one in `metrics`), tracing, logs and the health server. Imports only
the contract."""
