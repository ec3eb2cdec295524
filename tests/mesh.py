"""The whole mesh in-process: five real gRPC servers on port 0, each with its
own telemetry (and in-memory span exporter), over the session's vLLM engine.
One for the test session, shared by the e2e, hostile and fuzz folders
(tests/conftest.py loads this module as a plugin)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.server import running_gateway
from gateway.settings import GatewaySettings
from maas.v1 import auth_pb2, auth_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.anomaly.core import AnomalyCore
from services.anomaly.server import create_server as create_anomaly_server
from services.anomaly.settings import AnomalySettings
from services.auth.server import create_server as create_auth_server
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from services.inference.engine import Engine
from services.inference.server import create_server as create_inference_server
from services.router.replicas import ReplicaSet
from services.router.server import running_router

SERVICES = ("gateway", "auth", "router", "inference", "anomaly")
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

    @property
    def gateway(self) -> str:
        return self.targets["gateway"]


@pytest_asyncio.fixture(scope="session")
async def mesh(
    vllm_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    spans = {name: InMemorySpanExporter() for name in SERVICES}
    metrics = InMemoryMetricReader()
    tel = {
        name: setup(
            name,
            TelemetrySettings(),
            span_exporter=spans[name],
            metric_reader=metrics if name == "gateway" else None,
        )
        for name in SERVICES
    }
    admin_token = secrets.token_urlsafe(32)
    db_path: Path = tmp_path_factory.mktemp("auth") / "auth.db"
    async with AsyncExitStack() as stack:
        inference, _ = await create_inference_server("127.0.0.1:0", tel["inference"], vllm_engine)
        stack.push_async_callback(inference.stop, 1.0)

        store = await stack.enter_async_context(open_sqlite_store(db_path))
        auth_settings = AuthSettings(
            port=0,
            admin_token=admin_token,
            key_pepper=secrets.token_urlsafe(32),
            database_path=db_path,
        )
        auth = await create_auth_server(auth_settings, tel["auth"], store)
        stack.push_async_callback(auth.stop, 1.0)

        anomaly_core = AnomalyCore()
        anomaly = await create_anomaly_server(AnomalySettings(port=0), tel["anomaly"], anomaly_core)
        stack.push_async_callback(anomaly.stop, 1.0)

        replicas = ReplicaSet([f"127.0.0.1:{inference.port}"], tel["router"])
        await replicas.start()
        stack.push_async_callback(replicas.aclose)
        router = await stack.enter_async_context(
            running_router("127.0.0.1:0", tel["router"], replicas, grace_s=1.0)
        )
        await replicas.wait_ready(timeout_s=60)

        gateway_settings = GatewaySettings(
            port=0,
            http_port=0,
            router_address=f"127.0.0.1:{router.port}",
            auth_address=f"127.0.0.1:{auth.port}",
            anomaly_address=f"127.0.0.1:{anomaly.port}",
            grace_period_s=2.0,
            auth_cache_ttl_s=AUTH_CACHE_TTL_S,
            # Tests send refused requests on purpose from one tenant and one
            # address; tests/hostile/test_refusals.py checks the budgets on a
            # gateway of its own.
            refusal_burst=1e6,
            auth_failure_burst=1e6,
            usage_outbox_path=tmp_path_factory.mktemp("gateway") / "outbox.db",
        )
        gateway = await stack.enter_async_context(running_gateway(gateway_settings, tel["gateway"]))
        ports = {
            "gateway": gateway.port,
            "auth": auth.port,
            "router": router.port,
            "inference": inference.port,
            "anomaly": anomaly.port,
        }
        yield Mesh(
            targets={name: f"127.0.0.1:{port}" for name, port in ports.items()},
            spans=spans,
            gateway_metrics=metrics,
            admin_token=admin_token,
            model=vllm_engine.model_info.name,
            engine=vllm_engine,
            anomaly=anomaly_core,
            http=f"http://127.0.0.1:{gateway.http_port}",
        )
    for t in tel.values():
        t.shutdown()


@dataclass
class TenantKey:
    tenant_id: str
    api_key: str


TenantFactory = Callable[[], Awaitable[TenantKey]]


@pytest_asyncio.fixture
async def new_tenant(mesh: Mesh) -> TenantFactory:
    """Makes fresh tenants with their own keys, so each test sees only its own usage."""
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
