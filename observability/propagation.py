"""W3C trace context on the wire.

The OpenTelemetry grpc interceptors inject and extract with the global
propagator, not one handed to them, so that is the one that must speak W3C."""

from __future__ import annotations

import logging

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACEPARENT_HEADER = "traceparent"


def ensure_w3c_propagation() -> None:
    """Keeps the global propagator when it carries `traceparent` (the default,
    tracecontext+baggage, does), and installs that default when it does not
    (OTEL_PROPAGATORS naming only b3, say): every hop of the mesh must agree."""
    current = propagate.get_global_textmap()
    if TRACEPARENT_HEADER in current.fields:
        return
    log.warning(
        "global propagator %s does not carry W3C trace context; using tracecontext,baggage",
        type(current).__name__,
    )
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
