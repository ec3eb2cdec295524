"""One request is one trace across the mesh; every service answers health and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from maas_cli.client import MaasClient
from tests.mesh import Mesh, TenantKey
from tests.support import eventually

FULL_NAMES = {
    "gateway": ["maas.v1.Gateway"],
    "auth": ["maas.v1.Auth", "maas.v1.Metering", "maas.v1.Billing"],
    "router": ["maas.v1.Router"],
    "inference": ["maas.v1.Inference"],
    "anomaly": ["maas.v1.Anomaly"],
}


def hops(routing: str) -> dict[str, str]:
    """The server span each service records for one generation."""
    return {
        "gateway": "/maas.v1.Gateway/Generate",
        "auth": "/maas.v1.Auth/Authenticate",
        # Direct: the router only admits and picks the replica (Route).
        "router": "/maas.v1.Router/Route" if routing == "direct" else "/maas.v1.Router/Generate",
        "inference": "/maas.v1.Inference/Generate",
    }


def callers(routing: str) -> tuple[tuple[str, str], ...]:
    """Who calls whom: with direct routing the gateway calls the replica itself."""
    return (
        ("gateway", "auth"),
        ("gateway", "router"),
        ("gateway" if routing == "direct" else "router", "inference"),
    )


async def test_one_request_is_one_trace_across_services(mesh: Mesh, tenant_key: TenantKey) -> None:
    for exporter in mesh.spans.values():
        exporter.clear()
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        async for _ in client.generate(mesh.model, prompt="Trace me", max_tokens=4):
            pass

    names = hops(mesh.routing)

    def server_spans() -> dict[str, list[object]]:
        found: dict[str, list[object]] = {}
        for service, name in names.items():
            found[service] = [s for s in mesh.spans[service].get_finished_spans() if s.name == name]
        return found

    def client_spans(caller: str, callee: str) -> list[ReadableSpan]:
        return [
            s
            for s in mesh.spans[caller].get_finished_spans()
            if s.name == names[callee] and s.kind == SpanKind.CLIENT
        ]

    # Each side ends its span as it closes the call, not all at once.
    await eventually(
        lambda: (
            all(len(v) == 1 for v in server_spans().values())
            and all(client_spans(caller, callee) for caller, callee in callers(mesh.routing))
        )
    )
    spans = {service: found[0] for service, found in server_spans().items()}
    trace_ids = {span.context.trace_id for span in spans.values()}  # type: ignore[attr-defined]
    assert len(trace_ids) == 1, f"spans of one request span {len(trace_ids)} traces"
    for service, span in spans.items():
        assert span.resource.attributes["service.name"] == service  # type: ignore[attr-defined]
    # Each hop's server span is the child of the client span of the hop above.
    for caller, callee in callers(mesh.routing):
        found = client_spans(caller, callee)
        assert len(found) == 1, (caller, callee)
        parent = spans[callee].parent  # type: ignore[attr-defined]
        assert parent is not None
        assert parent.span_id == found[0].context.span_id


@pytest.mark.parametrize("service", sorted(FULL_NAMES))
async def test_every_service_answers_health_and_reflection(mesh: Mesh, service: str) -> None:
    async with grpc.aio.insecure_channel(mesh.targets[service]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ["", *FULL_NAMES[service]]:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        reply = await call.read()
        listed = {s.name for s in reply.list_services_response.service}
        assert set(FULL_NAMES[service]) <= listed
        assert "grpc.health.v1.Health" in listed


async def test_gateway_counts_requests_and_tokens(mesh: Mesh, tenant_key: TenantKey) -> None:
    def completion_tokens() -> int:
        data = mesh.gateway_metrics.get_metrics_data()
        total = 0
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "maas.gateway.tokens":
                        continue
                    for point in metric.data.data_points:
                        if (
                            isinstance(point, NumberDataPoint)
                            and point.attributes
                            and point.attributes.get("kind") == "completion"
                        ):
                            total += int(point.value)
        return total

    before = completion_tokens()
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        async for _ in client.generate(mesh.model, prompt="count me", max_tokens=5):
            pass
    await eventually(lambda: completion_tokens() == before + 5)


async def test_a_refused_request_span_carries_its_status_code(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    mesh.spans["gateway"].clear()
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in client.generate(mesh.model, prompt="", max_tokens=2):
                pass

    def refused() -> list[object]:
        return [
            s
            for s in mesh.spans["gateway"].get_finished_spans()
            if s.name == hops(mesh.routing)["gateway"] and s.kind == SpanKind.SERVER
        ]

    await eventually(lambda: len(refused()) == 1)
    span = refused()[0]
    # INVALID_ARGUMENT is the caller's error: by OTel's gRPC conventions the
    # server span's status stays unset, and the code is an attribute.
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # type: ignore[attr-defined]
