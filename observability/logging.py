"""structlog set-up: JSON lines on stderr with service, trace and request ids.

Imports nothing heavy: entry points call it before loading the engine."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace

from observability.settings import TelemetrySettings


class _StderrHandler(logging.Handler):
    """Writes each line to the `sys.stderr` of the moment, not the one at set-up:
    test runners swap it per test, and a handler bound to a closed capture
    stream would fail on every later line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = format(span_context.trace_id, "032x")
        event["span_id"] = format(span_context.span_id, "016x")
    return event


# Log fields that hold what tenants sent or got back.
CONTENT_FIELDS = ("prompt", "messages", "completion")
REDACTED = "[redacted: log_content is off]"


def _redact_content(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for name in CONTENT_FIELDS:
        if name in event:
            event[name] = REDACTED
    return event


def configure_logging(service_name: str, settings: TelemetrySettings) -> None:
    """Routes structlog and stdlib logging through one renderer. Idempotent."""

    def add_service(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service_name)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
        _add_trace_ids,
    ]
    if not settings.log_content:
        shared.append(_redact_content)
    # The console renderer draws exceptions itself and warns when they arrive
    # already formatted; JSON needs them as a string field. Its tracebacks
    # show local variables (a request, its prompt) only when content may be logged.
    renderer: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if settings.log_format == "json"
        else [
            structlog.dev.ConsoleRenderer(
                exception_formatter=structlog.dev.RichTracebackFormatter(
                    show_locals=settings.log_content
                )
            )
        ]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level.upper())
