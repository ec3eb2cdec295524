"""The whole mesh in-process, secured: five real gRPC servers on port 0 over
the session's vLLM engine, each built from its own settings with TLS (from a
throwaway CA) and the service token, as `make run` configures them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from deploy.local.throwaway_ca import OPERATOR, MeshCertificates, write_throwaway_ca
from gateway.server import running_gateway
from gateway.settings import GatewaySettings
from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.client import MaasClient
from maas_cli.connection import Connection
from observability import setup
from observability.settings import TelemetrySettings
from services.anomaly.core import AnomalyCore
from services.anomaly.server import create_server as create_anomaly_server
from services.anomaly.settings import AnomalySettings
from services.auth.server import create_server as create_auth_server
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from services.common.security import channel_security, server_security
from services.common.settings import TlsSettings
from services.inference.engine import Engine
from services.inference.server import create_server as create_inference_server
from services.inference.settings import InferenceSettings
from services.router.replicas import ReplicaSet
from services.router.server import running_router
from services.router.settings import RouterSettings

SERVICES = ("gateway", "auth", "router", "inference", "anomaly")
INTERNAL = ("auth", "router", "inference", "anomaly")


@dataclass
class SecureMesh:
    targets: dict[str, str]
    admin_token: str
    service_token: str | None
    certs: MeshCertificates | None
    model: str

    @property
    def gateway(self) -> str:
        return self.targets["gateway"]

    @property
    def gateway_http(self) -> str:
        """The OpenAI-compatible face: https:// when the mesh has certificates."""
        scheme = "https" if self.certs else "http"
        return f"{scheme}://{self.targets['gateway-http']}"

    def operator(self, *, token: bool = True) -> Connection:
        """An operator's connection: the mesh CA, the operator's client
        certificate (under TLS) and, unless `token=False`, the service token."""
        certs = self.certs
        return Connection(
            ca=certs.ca if certs else None,
            cert=certs[OPERATOR].cert if certs else None,
            key=certs[OPERATOR].key if certs else None,
            service_token=self.service_token if token else None,
        )

    def tenant_client(self, api_key: str) -> MaasClient:
        """A tenant's client of the public gateway: TLS with the CA, no certificate."""
        return MaasClient(
            self.gateway,
            api_key,
            credentials=Connection(ca=self.certs.ca if self.certs else None).credentials(),
        )

    async def new_api_key(self) -> str:
        return (await self.new_tenant())[1]

    async def new_tenant(self) -> tuple[str, str]:
        """A fresh tenant's id and API key, made as an operator would."""
        admin = (("authorization", f"Bearer {self.admin_token}"),)
        async with self.operator().channel(self.targets["auth"]) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            tenant = await stub.CreateTenant(
                # Unlimited, explicitly: these tests are about transport, not limits.
                auth_pb2.CreateTenantRequest(
                    name=f"tenant-{secrets.token_hex(4)}", plan=auth_pb2.Plan()
                ),
                metadata=admin,
            )
            created = await stub.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="test"),
                metadata=admin,
            )
        return tenant.tenant_id, created.api_key


def _tls(certs: MeshCertificates | None, name: str, *, mutual: bool) -> TlsSettings:
    if certs is None:
        return TlsSettings()
    return TlsSettings(
        cert=certs[name].cert, key=certs[name].key, ca=certs.ca, require_client_cert=mutual
    )


async def start_secure_mesh(
    stack: AsyncExitStack,
    engine: Engine,
    state: Path,
    *,
    certs: MeshCertificates | None,
    service_token: str | None,
) -> SecureMesh:
    """Inner hops: mutual TLS when `certs`; the gateway's public port: TLS
    without client certificates. Every service holds `service_token`."""
    tel = {name: setup(name, TelemetrySettings()) for name in SERVICES}
    for t in tel.values():
        stack.callback(t.shutdown)
    admin_token = secrets.token_urlsafe(32)

    inference_settings = InferenceSettings(
        model=engine.model_info.name,
        port=0,
        tls=_tls(certs, "inference", mutual=True),
        service_token=service_token,
    )
    inference, _ = await create_inference_server(
        inference_settings.address, tel["inference"], engine,
        security=server_security(inference_settings),
    )  # fmt: skip
    stack.push_async_callback(inference.stop, 1.0)

    db_path = state / "auth.db"
    store = await stack.enter_async_context(open_sqlite_store(db_path))
    auth_settings = AuthSettings(
        port=0,
        admin_token=admin_token,
        key_pepper=secrets.token_urlsafe(32),
        database_path=db_path,
        tls=_tls(certs, "auth", mutual=True),
        service_token=service_token,
    )
    auth = await create_auth_server(auth_settings, tel["auth"], store)
    stack.push_async_callback(auth.stop, 1.0)

    anomaly_settings = AnomalySettings(
        port=0, tls=_tls(certs, "anomaly", mutual=True), service_token=service_token
    )
    anomaly = await create_anomaly_server(anomaly_settings, tel["anomaly"], AnomalyCore())
    stack.push_async_callback(anomaly.stop, 1.0)

    router_settings = RouterSettings(
        port=0,
        replicas=[f"127.0.0.1:{inference.port}"],
        tls=_tls(certs, "router", mutual=True),
        service_token=service_token,
    )
    replicas = ReplicaSet(
        router_settings.replicas, tel["router"], security=channel_security(router_settings)
    )
    await replicas.start()
    stack.push_async_callback(replicas.aclose)
    router = await stack.enter_async_context(
        running_router(
            router_settings.address, tel["router"], replicas, grace_s=1.0,
            security=server_security(router_settings),
        )
    )  # fmt: skip
    await replicas.wait_ready(timeout_s=60)

    gateway_settings = GatewaySettings(
        port=0,
        router_address=f"127.0.0.1:{router.port}",
        auth_address=f"127.0.0.1:{auth.port}",
        anomaly_address=f"127.0.0.1:{anomaly.port}",
        grace_period_s=2.0,
        usage_outbox_path=state / "outbox.db",
        http_port=0,
        tls=_tls(certs, "gateway", mutual=False),
        service_token=service_token,
    )
    gateway = await stack.enter_async_context(running_gateway(gateway_settings, tel["gateway"]))
    assert gateway.http_port is not None
    ports = {
        "gateway": gateway.port,
        "gateway-http": gateway.http_port,
        "auth": auth.port,
        "router": router.port,
        "inference": inference.port,
        "anomaly": anomaly.port,
    }
    return SecureMesh(
        targets={name: f"127.0.0.1:{port}" for name, port in ports.items()},
        admin_token=admin_token,
        service_token=service_token,
        certs=certs,
        model=engine.model_info.name,
    )


@pytest_asyncio.fixture(scope="module")
async def mtls_mesh(
    vllm_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecureMesh]:
    """As `make run TLS=1`: mutual TLS on every inner hop, and the service token."""
    certs = write_throwaway_ca(tmp_path_factory.mktemp("tls"))
    async with AsyncExitStack() as stack:
        yield await start_secure_mesh(
            stack,
            vllm_engine,
            tmp_path_factory.mktemp("mtls-mesh"),
            certs=certs,
            service_token=secrets.token_urlsafe(32),
        )


@pytest_asyncio.fixture(scope="module")
async def token_mesh(
    vllm_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SecureMesh]:
    """As `make run`: plaintext, internal services answer only the service token."""
    async with AsyncExitStack() as stack:
        yield await start_secure_mesh(
            stack,
            vllm_engine,
            tmp_path_factory.mktemp("token-mesh"),
            certs=None,
            service_token=secrets.token_urlsafe(32),
        )
