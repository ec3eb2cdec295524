"""Calls that cost auth a query (usage, adapters, the model list with the
tenant's adapters) are bounded per tenant: past the budget a tenant is
refused with RESOURCE_EXHAUSTED and the wait, before auth is asked; another
tenant's calls go on."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maas.v1 import adapter_pb2, auth_pb2, auth_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from services.mesh import MeshOptions, RunningMesh, running_mesh

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu"}
BURST = 3


async def new_key(mesh: RunningMesh, admin: tuple[tuple[str, str], ...]) -> str:
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        auth = auth_pb2_grpc.AuthStub(ch)
        tenant = await auth.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}"), metadata=admin
        )
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
        )
    return key.api_key


async def test_a_tenant_past_its_read_budget_is_refused_with_the_wait(tmp_path: Path) -> None:
    options = MeshOptions(
        state=tmp_path,
        model=MODEL,
        # Refilled far slower than the test runs: the burst is all there is.
        overrides={"inference": SIM, "gateway": {"read_burst": BURST, "reads_per_s": 0.01}},
    )
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        greedy, other = await new_key(mesh, admin), await new_key(mesh, admin)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as ch:
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            metadata = (("authorization", f"Bearer {greedy}"),)
            # Usage, adapters and the model list draw on one budget.
            await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=metadata)
            await gateway.ListAdapters(adapter_pb2.ListAdaptersRequest(), metadata=metadata)
            await gateway.ListModels(gateway_pb2.ListModelsRequest(), metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(err.value)
            assert status is not None
            retry = error_details_pb2.RetryInfo()
            assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
            assert retry.retry_delay.ToNanoseconds() > 0
            # Another tenant is untouched.
            others = (("authorization", f"Bearer {other}"),)
            await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=others)
        # The HTTP face draws on the same budget: a 429 with Retry-After.
        async with httpx.AsyncClient(
            base_url=f"http://{mesh.target('gateway', 'http_port')}"
        ) as http:
            refused = await http.get("/v1/usage", headers={"authorization": f"Bearer {greedy}"})
        assert refused.status_code == 429, refused.text
        assert float(refused.headers["retry-after"]) > 0
