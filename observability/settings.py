"""Telemetry settings, embedded in every service's settings as `telemetry`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TelemetrySettings(BaseModel):
    # OTLP/gRPC collector for traces and metrics; nothing is exported when unset.
    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    metrics_export_interval_s: float = Field(default=10.0, gt=0)
    # Share of new traces recorded; a call inside a trace follows its parent's
    # decision, so a request is traced at every hop or at none. A service with
    # no OTLP endpoint records nothing and passes "not sampled" on: set the
    # endpoint on every service or on none.
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # Prompt and completion text in logs: the inference service's line per
    # request, log fields named like content, local variables in console
    # tracebacks. Off, nothing logs them; on only to debug, never for tenants'
    # real traffic without their say.
    log_content: bool = False
    # Metrics for Prometheus to scrape at http://HOST:PORT/metrics; 0: no endpoint.
    # Metrics served here are not also pushed over OTLP, so nothing is counted twice.
    prometheus_port: int = Field(default=0, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"
