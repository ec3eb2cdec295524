"""One `setup(service, settings)` per service: its own tracer and meter
providers (never the process-global ones, so several services can share a
process in tests and each reports its own service.name) and the interceptors
that servers and channels are given explicitly."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from observability.interceptors import (
    RequestContextServerInterceptor,
    StreamClosingServerInterceptor,
    request_id_client_interceptors,
)
from observability.propagation import ensure_w3c_propagation
from observability.settings import TelemetrySettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


@dataclass
class MetricsEndpoint:
    """The Prometheus scrape endpoint: an HTTP server on its own thread."""

    server: WSGIServer
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@dataclass
class Telemetry:
    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _server_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    _client_interceptors: list[grpc.aio.ClientInterceptor] = field(default_factory=list)
    _metrics_endpoint: MetricsEndpoint | None = None
    _metrics_registry: CollectorRegistry | None = None

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        """What `/metrics` serves, for collectors beyond the meter's (the
        inference engine's own); None without a Prometheus endpoint."""
        return self._metrics_registry

    @property
    def prometheus_port(self) -> int | None:
        """Where `/metrics` is served; None without a Prometheus endpoint."""
        return self._metrics_endpoint.server.server_port if self._metrics_endpoint else None

    def tracer(self) -> Tracer:
        return self.tracer_provider.get_tracer(self.service_name)

    def meter(self) -> Meter:
        return self.meter_provider.get_meter(self.service_name)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return list(self._server_interceptors)

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return list(self._client_interceptors)

    def shutdown(self) -> None:
        """Flushes what is buffered and stops exporting."""
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup(
    service_name: str,
    settings: TelemetrySettings,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    ensure_w3c_propagation()
    resource = Resource.create({SERVICE_NAME: service_name})
    exporting = bool(settings.otlp_endpoint) or span_exporter is not None
    # Recording a span costs about a millisecond per call on the request path;
    # with nowhere to send it that buys nothing. Unrecorded spans still carry
    # the trace id into logs and on to the next hop.
    sampler = (
        ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)) if exporting else ALWAYS_OFF
    )
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    readers: list[MetricReader] = []
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
        )
        if not settings.prometheus_port:
            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=settings.otlp_endpoint, insecure=True),
                    export_interval_millis=settings.metrics_export_interval_s * 1000,
                )
            )
    registry = None
    if settings.prometheus_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        # A registry per service, never the process-global one, for the same
        # reason as the providers: each endpoint shows its own service only.
        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    endpoint = None
    if registry is not None:
        from prometheus_client import start_http_server

        server, thread = start_http_server(
            settings.prometheus_port, settings.prometheus_host, registry=registry
        )
        endpoint = MetricsEndpoint(server, thread)
    return Telemetry(
        service_name=service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        # The first server interceptor's wrapper is the outermost. Stream
        # closing wraps the span so a cancelled stream ends it in the call's
        # task; the span wraps the request id so every log line of the handler
        # carries both ids; and the request-context layer turns coroutine-style
        # streaming handlers (health Watch) into the generators the OTel
        # wrapper can iterate.
        _server_interceptors=[
            StreamClosingServerInterceptor(),
            aio_server_interceptor(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
            RequestContextServerInterceptor(),
        ],
        _client_interceptors=[
            *request_id_client_interceptors(),
            *aio_client_interceptors(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
        ],
        _metrics_endpoint=endpoint,
        _metrics_registry=registry,
    )
