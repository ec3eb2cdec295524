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
from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.client import MaasClient
from maas_cli.connection import Connection
from services.catalog import SERVICES as CATALOG
from services.inference.engine import Engine
from services.mesh import MeshOptions, running_mesh

SERVICES = tuple(spec.name for spec in CATALOG)
# Those only the mesh may call.
INTERNAL = tuple(spec.name for spec in CATALOG if not spec.public)


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
    options = MeshOptions(
        state=state,
        model=engine.model_info.name,
        certs=certs,
        service_token=service_token,
        # One message per delta: pacing has tests of its own (tests/inference/test_pacing.py).
        overrides={"inference": {"stream_messages_per_s": 0}},
    )
    mesh = await stack.enter_async_context(
        running_mesh(options, dependencies={"inference": {"engine": engine}})
    )
    return SecureMesh(
        targets={**mesh.targets, "gateway-http": mesh.target("gateway", "http_port")},
        admin_token=options.admin_token,
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
