"""Traces, metrics and logs for every service, set up in one place."""

from observability.telemetry import Telemetry, setup

__all__ = ["Telemetry", "setup"]
