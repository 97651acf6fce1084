"""Logs (structlog, one event per line) and Prometheus metrics."""
