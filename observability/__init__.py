"""Traces, metrics and logs for every service, set up in one place.

`Telemetry` and `setup` load on first use: entry points import
`observability.logging` before anything heavy, and that must not pull in
grpc and the OpenTelemetry SDK through this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from observability.telemetry import Telemetry, setup

__all__ = ["Telemetry", "setup"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from observability import telemetry

        return getattr(telemetry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
