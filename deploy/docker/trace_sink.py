"""`python -m deploy.docker.trace_sink`: an OTLP/gRPC trace receiver that
writes one JSON line per span it gets (trace id, service, span name) to stdout.

The compose stack's stand-in for the OpenTelemetry Collector and Jaeger where
their images cannot be pulled (neither is packaged by Debian or PyPI): the
services export to it exactly as they would to a collector, so finding one
request's trace id here under every service's name proves the trace context
crossed each hop. With registry access, the `tracing` profile runs the real ones."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from deploy.runtime.spec import CommandSpec

SPEC = CommandSpec(module="deploy.docker.trace_sink", flags=frozenset({"--host", "--port"}))


class TraceSink(trace_service_pb2_grpc.TraceServiceServicer):
    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    line = {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "service": service,
                        "span": span.name,
                    }
                    sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    # OTLP's generated gRPC module carries no type hints.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceSink(), server)  # type: ignore[no-untyped-call]
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    # OTLP/gRPC's registered port, where the services' otlp_endpoint points.
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
