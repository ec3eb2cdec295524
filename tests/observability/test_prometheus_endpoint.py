"""Each service's optional Prometheus endpoint, scraped over real HTTP while a
real router serves: its own metrics and nothing of another service's."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import grpc
import pytest

from gateway.metrics import GatewayMetrics
from maas.v1 import router_pb2, router_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.router.server import serving
from services.router.settings import RouterSettings
from tests.support import free_port


def lines_of(text: str, metric: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(metric + "{")]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


async def test_each_service_serves_its_own_metrics_to_prometheus() -> None:
    router_telemetry = setup("router", TelemetrySettings(prometheus_port=free_port()))
    gateway_telemetry = setup("gateway", TelemetrySettings(prometheus_port=free_port()))
    router_port = router_telemetry.prometheus_port
    gateway_port = gateway_telemetry.prometheus_port
    assert router_port is not None and gateway_port is not None
    GatewayMetrics(gateway_telemetry.meter()).request_ended(
        model="tiny-llama", status="OK", prompt_tokens=3, completion_tokens=5, first_token_s=0.01
    )
    router_settings = RouterSettings(
        port=0, replicas=[], health_retry_initial_s=0.05, grace_period_s=0.5
    )
    try:
        async with (
            serving(router_settings, router_telemetry) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
        ):
            await router_pb2_grpc.RouterStub(ch).RegisterReplica(
                router_pb2.RegisterReplicaRequest(address="127.0.0.1:1")
            )
            router_text = await asyncio.to_thread(scrape, router_port)
            gateway_text = await asyncio.to_thread(scrape, gateway_port)
    finally:
        router_telemetry.shutdown()
        gateway_telemetry.shutdown()

    limit_lines = lines_of(router_text, "maas_router_replica_limit")
    assert len(limit_lines) == 1, router_text
    assert 'replica="127.0.0.1:1"' in limit_lines[0]
    assert 'service_name="router"' in router_text
    assert "maas_gateway" not in router_text
    requests = lines_of(gateway_text, "maas_gateway_requests_total")
    assert len(requests) == 1, gateway_text
    assert 'model="tiny-llama"' in requests[0] and requests[0].endswith(" 1.0")
    assert "maas_router" not in gateway_text
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(scrape, router_port)


def test_no_endpoint_unless_a_port_is_set() -> None:
    telemetry = setup("router", TelemetrySettings())
    try:
        assert telemetry.prometheus_port is None
    finally:
        telemetry.shutdown()
