"""Every log line is JSON with the service, trace and request ids."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from observability import setup
from observability.context import bind_request
from observability.logging import configure_logging
from observability.settings import TelemetrySettings


def test_log_lines_carry_trace_and_request_ids(capsys: pytest.CaptureFixture[str]) -> None:
    settings = TelemetrySettings()
    configure_logging("gateway", settings)
    telemetry = setup("gateway", settings)
    structlog.contextvars.clear_contextvars()
    try:
        with telemetry.tracer().start_as_current_span("work") as span:
            bind_request("req-123", "tenant-9")
            structlog.get_logger("test").info("hello", answer=42)
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        structlog.contextvars.clear_contextvars()
        telemetry.shutdown()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "hello"
    assert line["answer"] == 42
    assert line["service"] == "gateway"
    assert line["request_id"] == "req-123"
    assert line["tenant_id"] == "tenant-9"
    assert line["trace_id"] == trace_id
    assert line["level"] == "info"


def test_library_logs_are_the_same_json_and_set_up_is_idempotent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = TelemetrySettings()
    configure_logging("router", settings)
    configure_logging("router", settings)
    telemetry = setup("router", settings)
    structlog.contextvars.clear_contextvars()
    try:
        with telemetry.tracer().start_as_current_span("work") as span:
            bind_request("req-456")
            logging.getLogger("some.library").warning("disk %s", "full")
            span_context = span.get_span_context()
    finally:
        structlog.contextvars.clear_contextvars()
        telemetry.shutdown()
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert len(lines) == 1, "configured twice, logged twice"
    [line] = lines
    assert line["event"] == "disk full"
    assert line["level"] == "warning"
    assert line["service"] == "router"
    assert line["request_id"] == "req-456"
    assert line["trace_id"] == format(span_context.trace_id, "032x")
    assert line["span_id"] == format(span_context.span_id, "016x")
    assert "timestamp" in line


def test_sampling_follows_the_ratio_and_the_parent() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    none = setup("svc", TelemetrySettings(trace_sample_ratio=0.0), span_exporter=exporter)
    all_ = setup("svc", TelemetrySettings(trace_sample_ratio=1.0), span_exporter=exporter)
    try:
        with none.tracer().start_as_current_span("unsampled root"):
            pass
        assert exporter.get_finished_spans() == ()
        with all_.tracer().start_as_current_span("sampled root") as root:
            # A hop that samples nothing on its own still records a sampled parent's trace.
            ctx = trace.set_span_in_context(root)
            with none.tracer().start_as_current_span("child", context=ctx):
                pass
        assert [s.name for s in exporter.get_finished_spans()] == ["child", "sampled root"]
    finally:
        none.shutdown()
        all_.shutdown()
