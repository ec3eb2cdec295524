"""Internal services answer only the mesh (as `make run` sets them up): with
the service token configured, a tenant's API key gets nowhere at auth,
router, inference or anomaly, while the mesh itself, health, reflection and
the operator's admin calls keep working."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from maas_cli.cli import app
from maas_cli.connection import SERVICE_TOKEN_METADATA_KEY as CLIENT_TOKEN_KEY
from observability.channels import SERVICE_TOKEN_METADATA_KEY
from services.auth.servicer import ADMIN_RPCS
from tests.security.conftest import SERVICES, SecureMesh
from tests.support import eventually

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Caller:
    """What a call needs: a tenant's id, its key (in the metadata), the model."""

    tenant_id: str
    metadata: Metadata
    model: str

    @property
    def api_key(self) -> str:
        return dict(self.metadata)["authorization"].removeprefix("Bearer ")


Call = Callable[[grpc.aio.Channel, Caller], Awaitable[Any]]


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def router_generate(ch: grpc.aio.Channel, c: Caller) -> None:
    request = router_pb2.RouterGenerateRequest(
        request=generation_pb2.GenerateRequest(model=c.model, prompt="hi", max_tokens=2)
    )
    await _drain(router_pb2_grpc.RouterStub(ch).Generate(request, metadata=c.metadata))


async def router_list_replicas(ch: grpc.aio.Channel, c: Caller) -> None:
    await router_pb2_grpc.RouterStub(ch).ListReplicas(
        router_pb2.ListReplicasRequest(), metadata=c.metadata
    )


async def inference_generate(ch: grpc.aio.Channel, c: Caller) -> None:
    request = inference_pb2.InferenceGenerateRequest(
        request=generation_pb2.GenerateRequest(model=c.model, prompt="hi", max_tokens=2)
    )
    await _drain(inference_pb2_grpc.InferenceStub(ch).Generate(request, metadata=c.metadata))


async def auth_authenticate(ch: grpc.aio.Channel, c: Caller) -> None:
    await auth_pb2_grpc.AuthStub(ch).Authenticate(
        auth_pb2.AuthenticateRequest(api_key=c.api_key), metadata=c.metadata
    )


async def auth_reserve(ch: grpc.aio.Channel, c: Caller) -> None:
    await auth_pb2_grpc.AuthStub(ch).Reserve(
        auth_pb2.ReserveRequest(
            tenant_id=c.tenant_id, request_id=uuid.uuid4().hex, model=c.model, estimated_tokens=1
        ),
        metadata=c.metadata,
    )


async def metering_usage(ch: grpc.aio.Channel, c: Caller) -> None:
    await metering_pb2_grpc.MeteringStub(ch).GetUsage(
        metering_pb2.MeteringGetUsageRequest(tenant_id=c.tenant_id), metadata=c.metadata
    )


async def anomaly_report(ch: grpc.aio.Channel, c: Caller) -> None:
    await anomaly_pb2_grpc.AnomalyStub(ch).Report(
        iter([anomaly_pb2.Event(tenant_id=c.tenant_id)]), metadata=c.metadata
    )


async def anomaly_alerts(ch: grpc.aio.Channel, c: Caller) -> None:
    await anomaly_pb2_grpc.AnomalyStub(ch).ListAlerts(
        anomaly_pb2.ListAlertsRequest(), metadata=c.metadata
    )


INTERNAL_CALLS: list[tuple[str, Call]] = [
    ("router", router_generate),
    ("router", router_list_replicas),
    ("inference", inference_generate),
    ("auth", auth_authenticate),
    ("auth", auth_reserve),
    ("auth", metering_usage),
    ("anomaly", anomaly_report),
    ("anomaly", anomaly_alerts),
]
CALL_IDS = [f"{service}-{call.__name__}" for service, call in INTERNAL_CALLS]


async def caller(mesh: SecureMesh, *, token: str | None) -> Caller:
    tenant_id, api_key = await mesh.new_tenant()
    metadata: Metadata = (("authorization", f"Bearer {api_key}"),)
    if token is not None:
        metadata += ((SERVICE_TOKEN_METADATA_KEY, token),)
    return Caller(tenant_id, metadata, mesh.model)


@pytest.mark.parametrize(("service", "call"), INTERNAL_CALLS, ids=CALL_IDS)
@pytest.mark.parametrize("token", [None, "a-token-of-the-wrong-mesh-0123456789"])
async def test_a_tenant_key_without_the_service_token_is_unauthenticated(
    token_mesh: SecureMesh, service: str, call: Call, token: str | None
) -> None:
    tenant = await caller(token_mesh, token=token)
    async with grpc.aio.insecure_channel(token_mesh.targets[service]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(ch, tenant)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "only the mesh" in (info.value.details() or "")


@pytest.mark.parametrize(("service", "call"), INTERNAL_CALLS, ids=CALL_IDS)
async def test_the_service_token_admits_the_same_call(
    token_mesh: SecureMesh, service: str, call: Call
) -> None:
    tenant = await caller(token_mesh, token=token_mesh.service_token)
    async with grpc.aio.insecure_channel(token_mesh.targets[service]) as ch:
        await call(ch, tenant)


async def test_the_mesh_still_streams_for_a_tenant(token_mesh: SecureMesh) -> None:
    api_key = await token_mesh.new_api_key()
    chunks = 0
    async with token_mesh.tenant_client(api_key) as client:
        # Enough tokens that the stream cannot be one message: a reader that
        # lags gets what piled up coalesced, and on a starved machine 6 tokens
        # once arrived as one message.
        async for _ in client.generate(token_mesh.model, prompt="Hello", max_tokens=48):
            chunks += 1
        assert chunks > 1

        # The gateway's calls to auth (authenticate, reserve, the usage
        # ledger) carry the token too: the request gets billed.
        async def billed() -> bool:
            return (await client.usage()).requests == 1

        await eventually(billed)


@pytest.mark.parametrize("service", SERVICES)
async def test_health_and_reflection_answer_without_the_token(
    token_mesh: SecureMesh, service: str
) -> None:
    async with grpc.aio.insecure_channel(token_mesh.targets[service]) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        listed = await call.read()
        assert "grpc.health.v1.Health" in {s.name for s in listed.list_services_response.service}


async def test_admin_rpcs_take_the_admin_token_without_the_service_token(
    token_mesh: SecureMesh,
) -> None:
    async with grpc.aio.insecure_channel(token_mesh.targets["auth"]) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        admin = (("authorization", f"Bearer {token_mesh.admin_token}"),)
        tenant = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="ops"), metadata=admin)
        listed = await stub.ListTenants(auth_pb2.ListTenantsRequest(), metadata=admin)
        assert tenant.tenant_id in {t.tenant_id for t in listed.tenants}
        # Exempt from the mesh check, never open: without the admin token they refuse.
        for rpc in ADMIN_RPCS:
            request_type = getattr(auth_pb2, f"{rpc}Request")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await getattr(stub, rpc)(request_type())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, rpc
            assert "admin" in (info.value.details() or ""), rpc


async def test_the_operator_cli_works_against_a_mesh_only_mesh(token_mesh: SecureMesh) -> None:
    assert token_mesh.service_token is not None
    assert CLIENT_TOKEN_KEY == SERVICE_TOKEN_METADATA_KEY
    env = {
        "MAAS_AUTH": token_mesh.targets["auth"],
        "MAAS_ANOMALY": token_mesh.targets["anomaly"],
        "MAAS_ADMIN_TOKEN": token_mesh.admin_token,
        "COLUMNS": "250",
    }

    def maas(*args: str, token: str | None) -> Any:
        extra = {"MAAS_SERVICE_TOKEN": token} if token else {}
        return CliRunner().invoke(app, list(args), env={**env, **extra})

    listed = await asyncio.to_thread(maas, "admin", "tenant", "list", token=None)
    assert listed.exit_code == 0, listed.output
    alerts = await asyncio.to_thread(maas, "alerts", token=token_mesh.service_token)
    assert alerts.exit_code == 0, alerts.output
    refused = await asyncio.to_thread(maas, "alerts", token="not-the-mesh-token-0123456789")
    assert refused.exit_code == 16  # UNAUTHENTICATED's code: the CLI exits with the status
    assert "UNAUTHENTICATED" in refused.output


async def test_billing_rpcs_take_the_admin_token_without_the_service_token(
    token_mesh: SecureMesh,
) -> None:
    async with grpc.aio.insecure_channel(token_mesh.targets["auth"]) as ch:
        stub = billing_pb2_grpc.BillingStub(ch)
        admin = (("authorization", f"Bearer {token_mesh.admin_token}"),)
        listed = await stub.ListPrices(billing_pb2.ListPricesRequest(), metadata=admin)
        assert isinstance(listed, billing_pb2.ListPricesResponse)
        # Exempt from the mesh check, never open: without a credential they refuse.
        for rpc, request in (
            ("SetPrice", billing_pb2.SetPriceRequest()),
            ("ListPrices", billing_pb2.ListPricesRequest()),
            ("GetStatement", billing_pb2.GetStatementRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await getattr(stub, rpc)(request)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, rpc
        with pytest.raises(grpc.aio.AioRpcError) as export:
            await stub.ExportUsage(billing_pb2.ExportUsageRequest()).read()
        assert export.value.code() == grpc.StatusCode.UNAUTHENTICATED
