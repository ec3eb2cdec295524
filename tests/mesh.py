"""The whole mesh in-process: five real gRPC servers on port 0, each with its
own telemetry (and in-memory span exporter), over the session's vLLM engine.
One for the test session, shared by the e2e, hostile and fuzz folders
(tests/conftest.py loads this module as a plugin)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.settings import GatewaySettings
from maas.v1 import auth_pb2, auth_pb2_grpc
from services.anomaly.core import AnomalyCore
from services.anomaly.server import RunningAnomaly
from services.inference.engine import Engine
from services.mesh import InMemoryTelemetry, MeshOptions, running_mesh

AUTH_CACHE_TTL_S = 1.0


@dataclass
class Mesh:
    targets: dict[str, str]
    spans: dict[str, InMemorySpanExporter]
    gateway_metrics: InMemoryMetricReader
    admin_token: str
    model: str
    engine: Engine
    anomaly: AnomalyCore
    # The gateway's OpenAI-compatible HTTP face: "http://127.0.0.1:PORT".
    http: str
    # The gateway's routing design: "direct" (it streams from the replica the
    # router picked) or "proxy" (through the router).
    routing: str

    @property
    def gateway(self) -> str:
        return self.targets["gateway"]


@pytest_asyncio.fixture(scope="session")
async def mesh(
    vllm_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    async with open_test_mesh(vllm_engine, tmp_path_factory.mktemp("mesh")) as running:
        yield running


@asynccontextmanager
async def open_test_mesh(vllm_engine: Engine, state: Path) -> AsyncIterator[Mesh]:
    """The mesh the tests use, over one engine (the chat one, or another model's)."""
    telemetry = InMemoryTelemetry()
    options = MeshOptions(
        state=state,
        model=vllm_engine.model_info.name,
        overrides={
            # One message per delta: pacing has tests of its own (tests/inference/test_pacing.py).
            "inference": {"stream_messages_per_s": 0},
            "gateway": {
                "auth_cache_ttl_s": AUTH_CACHE_TTL_S,
                # Tests send refused requests on purpose from one tenant and one
                # address; tests/hostile/test_refusals.py checks the budgets on a
                # gateway of its own.
                "refusal_burst": 1e6,
                "auth_failure_burst": 1e6,
                # Tests poll usage and the model list as they wait; the read
                # budget has tests of its own (tests/gateway/test_read_budget.py).
                "read_burst": 1e6,
                # One message per delta, as for inference above.
                "stream_messages_per_s": 0,
            },
        },
    )
    async with running_mesh(
        options, dependencies={"inference": {"engine": vllm_engine}}, telemetry=telemetry
    ) as running:
        anomaly = running.services["anomaly"]
        assert isinstance(anomaly, RunningAnomaly)
        gateway_settings = running.settings["gateway"]
        assert isinstance(gateway_settings, GatewaySettings)
        yield Mesh(
            targets=running.targets,
            spans=telemetry.spans,
            gateway_metrics=telemetry.metrics["gateway"],
            admin_token=options.admin_token,
            model=vllm_engine.model_info.name,
            engine=vllm_engine,
            anomaly=anomaly.core,
            http=f"http://{running.target('gateway', 'http_port')}",
            routing=gateway_settings.routing,
        )


@dataclass
class TenantKey:
    tenant_id: str
    api_key: str


TenantFactory = Callable[[], Awaitable[TenantKey]]


@pytest_asyncio.fixture
async def new_tenant(mesh: Mesh) -> TenantFactory:
    """Makes fresh tenants with their own keys, so each test sees only its own usage."""
    return tenant_factory(mesh)


def tenant_factory(mesh: Mesh) -> TenantFactory:
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)

    async def make() -> TenantKey:
        async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            tenant = await stub.CreateTenant(
                # Unlimited, explicitly (the default plan is finite): a test that
                # needs limits sets them with set_plan.
                auth_pb2.CreateTenantRequest(
                    name=f"tenant-{secrets.token_hex(4)}", plan=auth_pb2.Plan()
                ),
                metadata=admin,
            )
            created = await stub.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="test"),
                metadata=admin,
            )
        return TenantKey(tenant.tenant_id, created.api_key)

    return make


@pytest_asyncio.fixture
async def tenant_key(new_tenant: TenantFactory) -> TenantKey:
    return await new_tenant()


async def set_plan(mesh: Mesh, tenant_id: str, plan: auth_pb2.Plan) -> None:
    """Sets a tenant's plan as an operator would."""
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        await auth_pb2_grpc.AuthStub(ch).SetPlan(
            auth_pb2.SetPlanRequest(tenant_id=tenant_id, plan=plan), metadata=admin
        )
