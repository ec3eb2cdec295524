"""A service that exports nothing records no spans (they cost a millisecond a
call), yet every call still has a trace id for its logs and the next hop."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import setup
from observability.settings import TelemetrySettings


def test_without_an_exporter_spans_are_not_recorded_but_carry_a_trace_id() -> None:
    telemetry = setup("quiet", TelemetrySettings())
    try:
        tracer = telemetry.tracer_provider.get_tracer("t")
        with tracer.start_as_current_span("call") as span:
            assert not span.is_recording()
            assert span.get_span_context().is_valid
            assert span.get_span_context().trace_id != 0
    finally:
        telemetry.shutdown()


def test_with_an_exporter_every_call_is_recorded_at_the_default_ratio() -> None:
    spans = InMemorySpanExporter()
    telemetry = setup("loud", TelemetrySettings(), span_exporter=spans)
    try:
        with telemetry.tracer_provider.get_tracer("t").start_as_current_span("call") as span:
            assert span.is_recording()
        assert [s.name for s in spans.get_finished_spans()] == ["call"]
    finally:
        telemetry.shutdown()
