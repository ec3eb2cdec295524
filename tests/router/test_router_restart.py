"""The router stopped and restarted under load: it re-learns its replicas
from the sync sidecar's reconcile, refuses what it had queued with a
retryable UNAVAILABLE, and a stream the gateway streams directly from its
replica outlives the router. Real services over simulated engines (the
inference service's own sim engine: the router, not the model, is tested);
the restart is the router's factory stopped and started again on its port,
as its process is on SIGTERM."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from deploy.runtime.replica_sync import keep_synced
from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
)
from maas_cli.client import MaasClient
from observability import setup
from observability.settings import TelemetrySettings
from services.common.errors import status_detail
from services.inference.server import RunningInference
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.mesh import MeshOptions, RunningMesh, running_mesh
from services.router.server import RunningRouter
from services.router.server import serving as serving_router
from services.router.settings import RouterSettings
from services.router.spec import CALLER_CHANNEL_OPTIONS, STARTING_REASON
from tests.support import eventually, free_port

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
# Past any test's length: only a router's restart can start a sync round.
NEVER_S = 3600.0
# tiny-cpu runs a step in about 3-4 ms: a stream of this many tokens lasts
# about a second, long enough to stop the router in the middle of it.
LONG_STREAM_TOKENS = 300


@asynccontextmanager
async def sim_replica(**extra: Any) -> AsyncIterator[RunningInference]:
    telemetry = setup("inference", TelemetrySettings())
    settings = InferenceSettings(model=MODEL, port=0, grace_period_s=0.5, **SIM, **extra)
    try:
        async with serving_inference(settings, telemetry) as running:
            yield running
    finally:
        telemetry.shutdown()


@asynccontextmanager
async def router_on(port: int, replicas: list[str], **extra: Any) -> AsyncIterator[RunningRouter]:
    telemetry = setup("router", TelemetrySettings())
    settings = RouterSettings(
        port=port, replicas=replicas, health_retry_initial_s=0.05, grace_period_s=5.0, **extra
    )
    try:
        async with serving_router(settings, telemetry) as running:
            yield running
    finally:
        telemetry.shutdown()


async def listed(router: router_pb2_grpc.RouterAsyncStub) -> set[str]:
    reply = await router.ListReplicas(router_pb2.ListReplicasRequest(), wait_for_ready=True)
    return {replica.address for replica in reply.replicas}


def retry_delay_s(err: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


async def test_a_restarted_router_relearns_its_replicas_from_the_sync() -> None:
    port = free_port()
    async with AsyncExitStack() as stack:
        replica = await stack.enter_async_context(sim_replica())
        ch = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CALLER_CHANNEL_OPTIONS)
        )
        stub = router_pb2_grpc.RouterStub(ch)
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with router_on(port, []):
            sync = asyncio.create_task(keep_synced(ch, "localhost", replica.port, NEVER_S, stop))
            await eventually(lambda: _has(stub, replica.port))
            before = await listed(stub)
        # The router is gone; a new one on the same port starts knowing nothing.
        async with router_on(port, []) as again:
            await eventually(lambda: _has(stub, replica.port))
            assert await listed(stub) == before
            await again.wait_ready(10.0)
        stop.set_result(None)
        await sync


async def _has(stub: router_pb2_grpc.RouterAsyncStub, port: int) -> bool:
    return f"127.0.0.1:{port}" in await listed(stub)


def routed(max_tokens: int, tenant: str = "t") -> router_pb2.RouterGenerateRequest:
    return router_pb2.RouterGenerateRequest(
        request=generation_pb2.GenerateRequest(
            model=MODEL, prompt="hello", max_tokens=max_tokens, ignore_eos=True
        ),
        context=router_pb2.RequestContext(tenant_id=tenant),
    )


async def test_a_stopping_router_refuses_what_it_queued_retryably_and_finishes_what_it_placed() -> (
    None
):
    port = free_port()
    async with AsyncExitStack() as stack:
        # A batch of one, no reserve: the next requests wait in the router's queue.
        replica = await stack.enter_async_context(sim_replica(max_num_seqs=1))
        router_cm = router_on(
            port, [f"127.0.0.1:{replica.port}"], reserved_share=0.0, light_headroom=0.0
        )
        running = await router_cm.__aenter__()
        await running.wait_ready(10.0)
        ch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        stub = router_pb2_grpc.RouterStub(ch)
        placed = stub.Generate(routed(LONG_STREAM_TOKENS))
        first = await placed.read()
        assert isinstance(first, generation_pb2.GenerateResponse)
        queued = stub.Generate(routed(8))
        queued_route = stub.Route()
        await queued_route.write(router_pb2.RouteUpdate(request=routed(8)))

        async def waiting() -> bool:
            stats = await stub.GetQueueStats(router_pb2.GetQueueStatsRequest())
            return stats.waiting == 2

        await eventually(waiting)
        # What the process does on SIGTERM: its factory's context exits.
        stopping = asyncio.create_task(router_cm.__aexit__(None, None, None))
        for call in (queued, queued_route):
            try:
                await call.read()
                raise AssertionError("a queued request was served by a stopping router")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert retry_delay_s(err) is not None
        # The placed stream runs to its end within the grace period.
        tokens = len(first.token_ids)
        while (chunk := await placed.read()) is not grpc.aio.EOF:
            assert isinstance(chunk, generation_pb2.GenerateResponse)
            tokens += len(chunk.token_ids)
        assert tokens == LONG_STREAM_TOKENS
        await stopping


async def test_a_router_not_yet_told_its_replicas_models_says_resend_not_not_found() -> None:
    # A replica it has not heard from (nothing listens there): its model is unknown.
    async with (
        router_on(0, [f"127.0.0.1:{free_port()}"]) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
    ):
        try:
            await router_pb2_grpc.RouterStub(ch).Generate(routed(4)).read()
            raise AssertionError("routed with no replica heard from")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            status = rpc_status.from_call(err)
            assert status is not None
            info = status_detail(status, error_details_pb2.ErrorInfo)
            assert info is not None and info.reason == STARTING_REASON


@asynccontextmanager
async def sim_mesh(state: Path) -> AsyncIterator[RunningMesh]:
    options = MeshOptions(
        state=state,
        model=MODEL,
        overrides={
            "inference": SIM,
            # The model list expires while the router is down, as its 5 s
            # default does in a longer restart.
            "gateway": {"routing": "direct", "model_list_ttl_s": 0.05},
        },
    )
    async with running_mesh(options) as mesh:
        yield mesh


async def new_key(mesh: RunningMesh) -> str:
    admin = (("authorization", f"Bearer {mesh.options.admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        tenant = await stub.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()),
            metadata=admin,
        )
        created = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="test"), metadata=admin
        )
    return str(created.api_key)


async def test_a_direct_stream_outlives_its_router_and_is_billed(tmp_path: Path) -> None:
    async with sim_mesh(tmp_path) as mesh:
        key = await new_key(mesh)
        metadata = (("authorization", f"Bearer {key}"),)
        async with (
            grpc.aio.insecure_channel(mesh.target("gateway")) as ch,
            MaasClient(mesh.target("gateway"), key) as client,
        ):
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            call = gateway.Generate(
                generation_pb2.GenerateRequest(
                    model=MODEL, prompt="The sea", max_tokens=LONG_STREAM_TOKENS, ignore_eos=True
                ),
                metadata=metadata,
            )
            first = await call.read()
            assert isinstance(first, generation_pb2.GenerateResponse)
            router = mesh.services["router"]
            assert isinstance(router, RunningRouter)
            # The router dies: every call it holds, the stream's Route among them, is cut.
            await router.server.server.stop(None)
            chunks = [first]
            while (chunk := await call.read()) is not grpc.aio.EOF:
                assert isinstance(chunk, generation_pb2.GenerateResponse)
                chunks.append(chunk)
            assert sum(len(c.token_ids) for c in chunks) == LONG_STREAM_TOKENS
            assert chunks[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH

            async def billed() -> bool:
                summary = await client.usage()
                return summary.requests == 1 and summary.completion_tokens == LONG_STREAM_TOKENS

            await eventually(billed)

            # A request that comes while the router is down waits for it
            # (the gateway retries before the first decision): the router is
            # back on its port a moment later and the request is served.
            port = int(mesh.target("router").rpartition(":")[2])
            waiting = asyncio.create_task(_generated(client, 8))
            await asyncio.sleep(0.2)
            async with router_on(port, [mesh.target("inference")]):
                assert await waiting > 0

            # Down for longer than the caller waits: UNAVAILABLE (retryable),
            # not INTERNAL, and before the caller's deadline.
            try:
                await _generated(client, 4, timeout_s=1.0)
                raise AssertionError("served with no router")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err


async def _generated(client: MaasClient, tokens: int, timeout_s: float | None = None) -> int:
    chunks = client.generate(MODEL, prompt="Again", max_tokens=tokens, timeout_s=timeout_s)
    return sum([len(c.token_ids) async for c in chunks])
