"""The gateway's one channel to several auth replicas: the address setting,
round robin over real auth servers, and a stopped replica skipped with no
call failing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from pydantic import ValidationError

from gateway.server import AUTH_RETRIED
from gateway.settings import GatewaySettings
from maas.v1 import auth_pb2, auth_pb2_grpc
from observability.channels import channel
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from services.common.balanced import balanced_options, balanced_target, list_authority
from services.mesh import InMemoryTelemetry

ADMIN_TOKEN = "test-operator-token-0123456789abcdef"
PEPPER = "test-pepper-0123456789abcdef0123456789"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:50052", "127.0.0.1:50052"),
        ("auth:50052", "auth:50052"),
        ("dns:///auth:50052", "dns:///auth:50052"),
        ("10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        (" 10.0.0.1:1 , 10.0.0.2:2 ", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        ("[::1]:1,[::2]:2", "ipv6:[::1]:1,[::2]:2"),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
    ],
)
def test_an_address_list_becomes_one_grpc_target(text: str, target: str) -> None:
    assert balanced_target("auth_address", text) == target
    assert GatewaySettings(auth_address=text).auth_address == text


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "10.0.0.1"),
        ("ipv6:[::1]:1,[::2]:2", "[::1]"),
        ("dns:///auth:50052", None),
        ("auth:50052", None),
    ],
)
def test_an_address_list_is_checked_for_its_first_hosts_certificate(
    target: str, authority: str | None
) -> None:
    assert list_authority(target) == authority
    options = dict(balanced_options(target, AUTH_RETRIED))
    assert options.get("grpc.default_authority") == authority


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("auth-1:50052,auth-2:50052", "dns:///NAME:PORT"),
        ("10.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("10.0.0.1:1,10.0.0.2", "not host:port"),
        ("10.0.0.1:1,10.0.0.2:99999", "not host:port"),
        ("10.0.0.1:1,", "not host:port"),
        ("  ", "empty"),
    ],
)
def test_an_address_list_gRPC_cannot_dial_stops_the_start_naming_the_field(
    text: str, says: str
) -> None:
    refusal = f"auth_address: .*{re.escape(says)}"
    with pytest.raises(ValidationError, match=refusal):
        GatewaySettings(auth_address=text)
    with pytest.raises(ValidationError, match=refusal):
        GatewaySettings.from_cli(["--auth-address", text])


class AuthReplicas:
    """Auth servers over one SQLite store (as replicas over one database), each
    with its own telemetry, so each one's calls can be counted."""

    def __init__(self, stack: AsyncExitStack, telemetry: InMemoryTelemetry) -> None:
        self.stack = stack
        self.telemetry = telemetry
        self.ports: list[int] = []
        self.stacks: list[AsyncExitStack] = []

    async def start(self, count: int, db: Path) -> None:
        store = await self.stack.enter_async_context(open_sqlite_store(db))
        for i in range(count):
            own = AsyncExitStack()
            self.stack.push_async_callback(own.aclose)
            settings = AuthSettings(
                port=0, admin_token=ADMIN_TOKEN, key_pepper=PEPPER, database_path=db
            )
            tel = self.telemetry(f"auth-{i}")
            own.callback(tel.shutdown)
            server = await own.enter_async_context(serving(settings, tel, store=store))
            self.ports.append(server.port)
            self.stacks.append(own)

    def calls(self, i: int, method: str) -> int:
        spans = self.telemetry.spans[f"auth-{i}"].get_finished_spans()
        return sum(1 for s in spans if s.name.endswith(f"/{method}"))


@pytest_asyncio.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[AuthReplicas]:
    async with AsyncExitStack() as stack:
        running = AuthReplicas(stack, InMemoryTelemetry())
        await running.start(2, tmp_path / "auth.db")
        yield running


def gateway_channel(replicas: AuthReplicas) -> grpc.aio.Channel:
    """The auth channel exactly as the gateway dials it."""
    text = ",".join(f"127.0.0.1:{port}" for port in replicas.ports)
    target = balanced_target("auth_address", text)
    return channel(
        target, InMemoryTelemetry()("gateway"), options=balanced_options(target, AUTH_RETRIED)
    )


async def api_key(stub: auth_pb2_grpc.AuthAsyncStub) -> str:
    tenant = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="t"), metadata=ADMIN)
    created = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="k"), metadata=ADMIN
    )
    return created.api_key


async def test_calls_spread_round_robin_over_both_replicas(replicas: AuthReplicas) -> None:
    async with gateway_channel(replicas) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        key = await api_key(stub)
        # Round robin takes a replica into rotation once connected: a bounded
        # number of calls, not a time, until both have answered some.
        for _ in range(200):
            await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=key), timeout=5)
            if replicas.calls(0, "Authenticate") and replicas.calls(1, "Authenticate"):
                break
        seen = [replicas.calls(i, "Authenticate") for i in range(2)]
        assert all(seen), seen
        # And from then on evenly: strictly alternating over ready replicas.
        before = [replicas.calls(i, "Authenticate") for i in range(2)]
        for _ in range(20):
            await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=key), timeout=5)
        after = [replicas.calls(i, "Authenticate") for i in range(2)]
        assert [a - b for a, b in zip(after, before, strict=True)] == [10, 10]


async def test_a_stopped_replica_is_skipped_and_no_call_fails(replicas: AuthReplicas) -> None:
    async with gateway_channel(replicas) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        key = await api_key(stub)
        for _ in range(200):
            await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=key), timeout=5)
            if replicas.calls(0, "Authenticate") and replicas.calls(1, "Authenticate"):
                break
        await replicas.stacks[0].aclose()
        served_before = replicas.calls(1, "Authenticate")
        for _ in range(40):
            principal = await stub.Authenticate(
                auth_pb2.AuthenticateRequest(api_key=key), timeout=5
            )
            assert principal.tenant_id
        assert replicas.calls(1, "Authenticate") - served_before == 40
