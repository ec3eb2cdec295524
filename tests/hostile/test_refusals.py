"""Floods of requests that are refused anyway: past its budget of refusals a
tenant's requests are refused unread, and past its budget of failed
authentications an address's unknown keys are refused without asking auth,
while a key once accepted keeps working. A gateway of its own, with small
budgets, over the mesh's auth, router and anomaly."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.server import serving
from gateway.settings import GatewaySettings
from maas.v1 import gateway_pb2_grpc, generation_pb2
from maas_cli.client import MaasClient
from observability import setup
from observability.settings import TelemetrySettings
from tests.hostile.conftest import Mesh, TenantFactory, bystander
from tests.support import eventually

BURST = 5
AUTH_FAILURE_BURST = 3
# Long enough that a key's cache entry lapses during the test.
AUTH_CACHE_TTL_S = 0.5


@pytest_asyncio.fixture
async def tight_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    settings = GatewaySettings(
        port=0,
        http_port=None,
        router_address=mesh.targets["router"],
        auth_address=mesh.targets["auth"],
        anomaly_address=mesh.targets["anomaly"],
        grace_period_s=1.0,
        auth_cache_ttl_s=AUTH_CACHE_TTL_S,
        usage_outbox_path=tmp_path_factory.mktemp("tight-gateway") / "outbox.db",
        refusal_burst=BURST,
        # Slow refills: nothing comes back during the test.
        refusals_per_s=0.01,
        auth_failure_burst=AUTH_FAILURE_BURST,
        auth_failures_per_s=0.01,
        # Each refusal past a budget is held (tests/gateway/test_refusal_holds.py
        # checks how); briefly here, so the 25 held below take seconds, not a minute.
        refusal_hold_max_s=0.1,
    )
    # Traced like the mesh's gateway, so auth's spans of its calls are recorded.
    telemetry = setup("gateway-tight", TelemetrySettings(), span_exporter=InMemorySpanExporter())
    try:
        async with serving(settings, telemetry) as gateway:
            yield f"127.0.0.1:{gateway.port}"
    finally:
        telemetry.shutdown()


async def outcome(gateway: str, api_key: str, request: generation_pb2.GenerateRequest) -> str:
    async with grpc.aio.insecure_channel(gateway) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=60
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            status = rpc_status.from_call(err)
            subject = ""
            for detail in status.details if status else ():
                if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                    quota = error_details_pb2.QuotaFailure()
                    detail.Unpack(quota)
                    subject = quota.violations[0].subject
            return f"{err.code().name}:{subject}" if subject else err.code().name
    return "OK"


def authenticate_calls(mesh: Mesh) -> int:
    spans: Sequence[ReadableSpan] = mesh.spans["auth"].get_finished_spans()
    return sum(s.name == "/maas.v1.Auth/Authenticate" for s in spans)


async def test_a_tenant_that_keeps_being_refused_is_refused_unread(
    mesh: Mesh, new_tenant: TenantFactory, tight_gateway: str
) -> None:
    attacker, honest = await new_tenant(), await new_tenant()
    too_long = generation_pb2.GenerateRequest(model=mesh.model, prompt="hi", max_tokens=100_000_000)
    ordinary = generation_pb2.GenerateRequest(model=mesh.model, prompt="hi", max_tokens=4)
    async with bystander(mesh, honest, gateway=tight_gateway):
        answers = [await outcome(tight_gateway, attacker.api_key, too_long) for _ in range(12)]
        # Its budget spent, even a good request waits until the budget refills.
        answers.append(await outcome(tight_gateway, attacker.api_key, ordinary))
    assert answers == ["INVALID_ARGUMENT"] * BURST + ["RESOURCE_EXHAUSTED:refused_requests"] * (
        13 - BURST
    )


async def test_an_address_failing_to_authenticate_stops_costing_auth(
    mesh: Mesh, new_tenant: TenantFactory, tight_gateway: str
) -> None:
    honest = await new_tenant()
    ordinary = generation_pb2.GenerateRequest(model=mesh.model, prompt="hi", max_tokens=4)
    assert await outcome(tight_gateway, honest.api_key, ordinary) == "OK"  # accepted once
    before = authenticate_calls(mesh)
    answers = [
        await outcome(tight_gateway, f"maas_{secrets.token_urlsafe(24)}", ordinary)
        for _ in range(20)
    ]
    assert answers == ["UNAUTHENTICATED"] * AUTH_FAILURE_BURST + [
        "RESOURCE_EXHAUSTED:failed_authentications"
    ] * (20 - AUTH_FAILURE_BURST)
    assert authenticate_calls(mesh) - before == AUTH_FAILURE_BURST
    # From the same address, a key auth accepted before is still looked up
    # once its cache entry has lapsed, and works; it is billed exactly.
    await asyncio.sleep(2 * AUTH_CACHE_TTL_S)
    assert await outcome(tight_gateway, honest.api_key, ordinary) == "OK"
    async with MaasClient(mesh.gateway, honest.api_key) as client:

        async def billed() -> bool:
            return (await client.usage()).requests == 2

        await eventually(billed)
        assert (await client.usage()).completion_tokens == 8
