"""A route the router refuses leaves nothing running in the gateway.

grpc's aio stream-stream call under client interceptors, in write() mode,
keeps a task waiting on its request queue when the server ends the call
first (grpc/grpc#37355): one per refused request until the garbage
collector destroys it, logging "Task was destroyed but it is pending". The
gateway's Router.Route call must end its request stream on every path."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
)
from services.mesh import MeshOptions, RunningMesh, running_mesh
from tests.support import eventually

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
REFUSED = 5


@asynccontextmanager
async def direct_mesh(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningMesh, tuple[tuple[str, str], ...]]]:
    """A mesh on the simulated engine routing directly, and a new tenant's key."""
    options = MeshOptions(
        state=tmp_path, model=MODEL, overrides={"inference": SIM, "gateway": {"routing": "direct"}}
    )
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
            auth = auth_pb2_grpc.AuthStub(ch)
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}"), metadata=admin
            )
            key = await auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
            )
        yield mesh, (("authorization", f"Bearer {key.api_key}"),)


def request_writers() -> int:
    """Tasks feeding a client call's request stream, in this process."""
    return sum(
        "_consume_request_iterator" in repr(task.get_coro())
        for task in asyncio.all_tasks()
        if not task.done()
    )


async def test_refused_routes_leave_no_request_writer_behind(tmp_path: Path) -> None:
    async with (
        direct_mesh(tmp_path) as (mesh, metadata),
        grpc.aio.insecure_channel(mesh.target("gateway")) as gw,
        grpc.aio.insecure_channel(mesh.targets["router"]) as rt,
    ):
        gateway = gateway_pb2_grpc.GatewayStub(gw)
        request = generation_pb2.GenerateRequest(model=MODEL, prompt="hi", max_tokens=2)
        async for _ in gateway.Generate(request, metadata=metadata):
            pass  # one served request: every long-lived stream is open now
        baseline = request_writers()
        # The only replica drained: the router refuses every route.
        await router_pb2_grpc.RouterStub(rt).DrainReplica(
            router_pb2.DrainReplicaRequest(address=mesh.targets["inference"])
        )
        for _ in range(REFUSED):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in gateway.Generate(request, metadata=metadata):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        await eventually(lambda: request_writers() <= baseline)


def pending_tasks() -> int:
    """Tasks still running in this process: a client call waiting for its
    status keeps grpc's own task for it (as does a call's request writer)."""
    return sum(not task.done() for task in asyncio.all_tasks())


async def test_served_routes_end_once_reported(tmp_path: Path) -> None:
    """The gateway holds a reported Route call until the router closes it,
    reading nothing more: each such call must still end (with its client
    span), not wait for its deadline."""
    async with (
        direct_mesh(tmp_path) as (mesh, metadata),
        grpc.aio.insecure_channel(mesh.target("gateway")) as gw,
    ):
        gateway = gateway_pb2_grpc.GatewayStub(gw)
        request = generation_pb2.GenerateRequest(model=MODEL, prompt="hi", max_tokens=2)
        async for _ in gateway.Generate(request, metadata=metadata):
            pass  # one served request: every long-lived stream is open now
        # What the first request left to finish (its bill, its event) finishes.
        await asyncio.sleep(1.0)
        baseline = pending_tasks()
        for _ in range(REFUSED):
            async for _ in gateway.Generate(request, metadata=metadata):
                pass
        await eventually(lambda: pending_tasks() <= baseline)
