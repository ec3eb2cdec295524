"""The replica sync against a real router: it registers every address a name
resolves to, deregisters the rest, and leaves the router alone when the
lookup fails. No replica needs to run: the router only watches them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from deploy.runtime.replica_sync import arguments, sync_once
from maas.v1 import router_pb2, router_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.router.server import serving
from services.router.settings import RouterSettings
from tests.support import free_port


@pytest_asyncio.fixture
async def router() -> AsyncIterator[router_pb2_grpc.RouterAsyncStub]:
    telemetry = setup("router", TelemetrySettings())
    settings = RouterSettings(port=0, replicas=[], health_retry_initial_s=0.05, grace_period_s=0.5)
    try:
        async with (
            serving(settings, telemetry) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
        ):
            yield router_pb2_grpc.RouterStub(ch)
    finally:
        telemetry.shutdown()


async def addresses(router: router_pb2_grpc.RouterAsyncStub) -> set[str]:
    listed = await router.ListReplicas(router_pb2.ListReplicasRequest())
    return {replica.address for replica in listed.replicas}


async def test_the_router_follows_what_the_name_resolves_to(
    router: router_pb2_grpc.RouterAsyncStub,
) -> None:
    port = free_port()
    ips = {info[4][0] for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    stale = f"127.0.0.9:{port}"
    await router.RegisterReplica(router_pb2.RegisterReplicaRequest(address=stale))

    result = await sync_once(router, "localhost", port)

    now = await addresses(router)
    assert f"127.0.0.1:{port}" in now
    assert len(now) == len(ips)
    assert result is not None
    assert set(result.registered) == now
    assert result.deregistered == (stale,)
    again = await sync_once(router, "localhost", port)
    assert again is not None and again.registered == () and again.deregistered == ()


async def test_a_failed_lookup_changes_nothing(router: router_pb2_grpc.RouterAsyncStub) -> None:
    kept = f"127.0.0.1:{free_port()}"
    await router.RegisterReplica(router_pb2.RegisterReplicaRequest(address=kept))

    assert await sync_once(router, "no-such-replicas.invalid", 50054) is None

    assert await addresses(router) == {kept}


async def test_several_names_are_one_replica_set(router: router_pb2_grpc.RouterAsyncStub) -> None:
    chat, embed = free_port(), free_port()

    result = await sync_once(router, "localhost", chat, ("127.0.0.1", embed))

    now = await addresses(router)
    assert {f"127.0.0.1:{chat}", f"127.0.0.1:{embed}"} <= now
    assert result is not None and set(result.registered) == now
    # One name that no longer resolves to an address: only its replicas go.
    again = await sync_once(router, "localhost", chat)
    assert again is not None and again.deregistered == (f"127.0.0.1:{embed}",)


async def test_one_failed_lookup_of_several_changes_nothing(
    router: router_pb2_grpc.RouterAsyncStub,
) -> None:
    kept = f"127.0.0.1:{free_port()}"
    await router.RegisterReplica(router_pb2.RegisterReplicaRequest(address=kept))

    missing = ("no-such-replicas.invalid", 50054)
    assert await sync_once(router, "127.0.0.1", free_port(), missing) is None

    assert await addresses(router) == {kept}


def test_replicas_takes_each_name_with_its_port() -> None:
    args = arguments().parse_args(["--replicas", "chat:50054, embed:50054"])
    assert args.replicas == [("chat", 50054), ("embed", 50054)]


@pytest.mark.parametrize(
    "hostile", ["chat", "chat:", ":50054", "chat:0", "chat:65536", "chat:-1", "chat:1,"]
)
def test_replicas_refuses_a_hostile_value_naming_it(
    hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        arguments().parse_args(["--replicas", hostile])
    assert refused.value.code == 2
    assert "--replicas" in capsys.readouterr().err
