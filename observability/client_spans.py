"""A call's client span and the metadata that carries the trace and the
request id on, for a channel opened without the telemetry interceptors.

For the hottest calls only (the gateway's to replicas, its Route calls and
its quota calls to auth): under the interceptors every message passes two
more layers (the tracing wrapper and grpc's intercepted-call iterator) and
every call starts a task of its own. The span and the metadata are those
the interceptors would make."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry import propagate, trace
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from observability.context import REQUEST_ID_METADATA_KEY, current_request_id

Metadata = list[tuple[str, str]]


def start_client_span(tracer: Tracer, method: str) -> tuple[Span, Metadata]:
    """A client span for `method` ("/package.Service/Method"), child of the
    current one and not made current, and the metadata to send with the call:
    the span's trace context and the current request's x-request-id."""
    service, name = method.lstrip("/").split("/", 1)
    span = tracer.start_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={
            RPC_SYSTEM: "grpc",
            RPC_GRPC_STATUS_CODE: grpc.StatusCode.OK.value[0],
            RPC_METHOD: name,
            RPC_SERVICE: service,
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = list(carrier.items())
    if (request_id := current_request_id()) is not None:
        metadata.append((REQUEST_ID_METADATA_KEY, request_id))
    return span, metadata


def client_call_failed(span: Span, failure: grpc.aio.AioRpcError) -> None:
    """Marks the span with the call's failure, as the interceptors do."""
    span.set_attribute(RPC_GRPC_STATUS_CODE, failure.code().value[0])
    span.set_status(Status(StatusCode.ERROR, description=f"{type(failure).__name__}: {failure}"))
    span.record_exception(failure)


def end_client_span(span: Span, failure: grpc.aio.AioRpcError | None) -> None:
    """Ends the span, with the call's status when it failed."""
    if failure is not None:
        client_call_failed(span, failure)
    span.end()


class ClientSpans:
    """`start_client_span` for one service's uninstrumented channels, with
    the metadata its other channels' interceptors add (the service token)."""

    def __init__(self, tracer: Tracer, fixed: Metadata) -> None:
        self._tracer = tracer
        self._fixed = fixed

    def start(self, method: str) -> tuple[Span, Metadata]:
        span, metadata = start_client_span(self._tracer, method)
        return span, [*metadata, *self._fixed]

    @contextmanager
    def call(self, method: str) -> Iterator[Metadata]:
        """Around one unary call: yields the metadata to send; the span ends
        with the block, marked failed by the call's AioRpcError."""
        span, metadata = self.start(method)
        try:
            yield metadata
        except grpc.aio.AioRpcError as err:
            client_call_failed(span, err)
            raise
        finally:
            span.end()
