"""The two ways a generation reaches its replica, side by side: "proxy" (the
router streams every chunk through) and "direct" (the router admits and
picks the replica, the gateway streams from it). Each test builds real
replicas over the session's engine, a router with the limits it needs and a
gateway in the given mode, over the session mesh's auth and anomaly. The one
fake is a replica that fails before its first token (tests/router)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from deploy.local.throwaway_ca import write_throwaway_ca
from gateway.routes import ReplicaChannels
from gateway.server import serving as serving_gateway
from gateway.settings import GatewaySettings
from maas.v1 import generation_pb2, router_pb2, router_pb2_grpc
from maas_cli.client import MaasClient
from observability import setup
from observability.settings import TelemetrySettings
from services.mesh import MeshOptions, running_mesh
from services.router.dispatcher import FlowPolicy
from tests.mesh import Mesh, TenantKey
from tests.router.test_router_service import (
    Replica,
    Router,
    fake_failing_replica,
    generate,
    inference_replica,
    queue_stats,
    router,
    serving,
)
from tests.security.conftest import SecureMesh
from tests.support import eventually

MODES = ["proxy", "direct"]


@asynccontextmanager
async def gateway(mesh: Mesh, router_address: str, routing: str, state: Path) -> AsyncIterator[str]:
    """A gateway in `routing` mode in front of `router_address`, billing to
    and reporting to the session mesh's auth and anomaly."""
    # Traced, so the hops after it trace too (observability/telemetry.py).
    telemetry = setup("gateway", TelemetrySettings(), span_exporter=InMemorySpanExporter())
    settings = GatewaySettings(
        port=0,
        http_port=None,
        router_address=router_address,
        auth_address=mesh.targets["auth"],
        anomaly_address=mesh.targets["anomaly"],
        usage_outbox_path=state / f"outbox-{routing}.db",
        routing=routing,
        grace_period_s=1.0,
        # These tests are refused on purpose, from one tenant and one address.
        refusal_burst=1e6,
        auth_failure_burst=1e6,
    )
    try:
        async with serving_gateway(settings, telemetry) as running:
            yield f"127.0.0.1:{running.port}"
    finally:
        telemetry.shutdown()


def in_flight(r: Router) -> int:
    return sum(x.limiter.in_flight for x in r.replicas.replicas)


async def one_replica(
    stack: AsyncExitStack, mesh: Mesh, tenant_key: TenantKey, routing: str, state: Path
) -> tuple[Replica, Router, MaasClient]:
    """A replica over the session's engine, a router over it and a gateway in
    `routing` mode, with a client of the tenant's; all closed with `stack`."""
    a = await stack.enter_async_context(inference_replica(mesh.engine))
    r = await stack.enter_async_context(router([a.address], mesh.model))
    await serving(r, 1)
    target = await stack.enter_async_context(gateway(mesh, r.target, routing, state))
    client = await stack.enter_async_context(MaasClient(target, tenant_key.api_key))
    return a, r, client


async def billed(client: MaasClient, requests: int) -> bool:
    return (await client.usage()).requests == requests


@pytest.mark.parametrize("routing", MODES)
async def test_a_generation_is_streamed_billed_exactly_and_reported(
    mesh: Mesh, tenant_key: TenantKey, routing: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        a, r, client = await one_replica(stack, mesh, tenant_key, routing, tmp_path)
        # Ports are reused across tests: count from what this address had.
        reported = mesh.anomaly.stats().by_replica.get(a.address, 0)
        chunks = [c async for c in client.generate(mesh.model, prompt="The sea", max_tokens=16)]
        assert len(chunks) > 1
        assert sum(len(c.token_ids) for c in chunks) == 16
        assert chunks[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
        await eventually(lambda: billed(client, 1))
        summary = await client.usage()
        assert (summary.completion_tokens, summary.prompt_tokens) == (
            16,
            chunks[-1].usage.prompt_tokens,
        )
        # The replica that served it is reported in either mode.
        await eventually(lambda: mesh.anomaly.stats().by_replica.get(a.address, 0) == reported + 1)
        await eventually(lambda: in_flight(r) == 0)
        assert a.generate_calls() == 1


@pytest.mark.parametrize("routing", MODES)
async def test_a_replica_failing_before_its_first_token_is_retried_on_another(
    mesh: Mesh, tenant_key: TenantKey, routing: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(mesh.engine))
        bad_address, fake = await stack.enter_async_context(fake_failing_replica(mesh.model))
        r = await stack.enter_async_context(router([bad_address, a.address], mesh.model))
        await serving(r, 2)
        target = await stack.enter_async_context(gateway(mesh, r.target, routing, tmp_path))
        client = await stack.enter_async_context(MaasClient(target, tenant_key.api_key))
        sent = 0
        # Until the fake has had one: every request completes, that one on `a`.
        while fake.calls == 0:
            sent += 1
            assert sent <= 20, "the fake replica was never chosen"
            chunks = [
                c async for c in client.generate(mesh.model, prompt=f"{sent} " * 40, max_tokens=8)
            ]
            assert chunks[-1].usage.completion_tokens == 8
        assert a.generate_calls() == sent
        [failed] = [x for x in r.replicas.replicas if x.address == bad_address]
        assert failed.consecutive_failures == 1
        await eventually(lambda: in_flight(r) == 0)


@pytest.mark.parametrize("routing", MODES)
async def test_a_cancel_reaches_the_engine_and_what_ran_is_billed(
    mesh: Mesh, tenant_key: TenantKey, routing: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        _, r, client = await one_replica(stack, mesh, tenant_key, routing, tmp_path)
        stream = client.generate(mesh.model, prompt="Once upon a time", max_tokens=1500)
        received = 0
        async for chunk in stream:
            received += len(chunk.token_ids)
            if received >= 3:
                break
        await stream.aclose()
        await eventually(lambda: mesh.engine.num_unfinished_requests() == 0)
        await eventually(lambda: in_flight(r) == 0)
        await eventually(lambda: billed(client, 1))
        assert received <= (await client.usage()).completion_tokens < 1500


@pytest.mark.parametrize("routing", MODES)
async def test_a_deadline_passing_mid_stream_is_the_callers_not_the_replicas(
    mesh: Mesh, tenant_key: TenantKey, routing: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        _, r, client = await one_replica(stack, mesh, tenant_key, routing, tmp_path)
        # Far shorter than 2,000 tokens take even with the router off the
        # token path; passing before or after the first token, it is the caller's.
        with pytest.raises(grpc.aio.AioRpcError) as late:
            async for _ in client.generate(
                mesh.model, prompt="late", max_tokens=2000, timeout_s=0.3
            ):
                pass
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: mesh.engine.num_unfinished_requests() == 0)
        await eventually(lambda: in_flight(r) == 0)
        [replica] = r.replicas.replicas
        assert replica.consecutive_failures == 0


def retry_info(err: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return retry
    return None


@pytest.mark.parametrize("routing", MODES)
async def test_a_full_queue_and_a_deadline_are_shed_with_the_same_statuses(
    mesh: Mesh, tenant_key: TenantKey, routing: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(mesh.engine))
        r = await stack.enter_async_context(
            router([a.address], mesh.model, limit=1, policy=FlowPolicy(max_queue=1))
        )
        await serving(r, 1)
        target = await stack.enter_async_context(gateway(mesh, r.target, routing, tmp_path))
        client = await stack.enter_async_context(MaasClient(target, tenant_key.api_key))

        async def tokens(prompt: str, max_tokens: int, timeout_s: float | None = None) -> int:
            chunks = [
                c
                async for c in client.generate(
                    mesh.model, prompt=prompt, max_tokens=max_tokens, timeout_s=timeout_s
                )
            ]
            return int(chunks[-1].usage.completion_tokens)

        # Holds the only slot, however fast generation goes, until it is closed:
        # a route decided and never reported on.
        hold = r.stub.Route()
        await hold.write(router_pb2.RouteUpdate(request=generate(mesh.model, "1")))
        assert isinstance(await hold.read(), router_pb2.RouteDecision)
        assert in_flight(r) == 1
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await tokens("2", 8, timeout_s=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: queue_stats(r, lambda q: q.shed["deadline"] == 1))

        queued = asyncio.create_task(tokens("3", 8))
        await eventually(lambda: queue_stats(r, lambda q: q.waiting == 1))
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await tokens("4", 8)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue" in (full.value.details() or "")
        retry = retry_info(full.value)
        assert retry is not None and retry.retry_delay.ToTimedelta().total_seconds() > 0
        assert dict((await r.stub.GetQueueStats(router_pb2.GetQueueStatsRequest())).shed) == {
            "deadline": 1,
            "queue_full": 1,
        }
        hold.cancel()
        assert await queued == 8
        await eventually(lambda: in_flight(r) == 0)


async def test_the_router_frees_the_place_whenever_the_route_ends(mesh: Mesh) -> None:
    """A caller of Route that goes away (a gateway killed mid-stream: its
    connection closed under the call), or closes its side without a report,
    leaves nothing held; a first update that is not the request is refused."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(mesh.engine))
        r = await stack.enter_async_context(router([a.address], mesh.model))
        await serving(r, 1)
        request = router_pb2.RouteUpdate(request=generate(mesh.model, "hello"))

        ch = grpc.aio.insecure_channel(r.target)
        route = router_pb2_grpc.RouterStub(ch).Route()
        await route.write(request)
        decision = await route.read()
        assert isinstance(decision, router_pb2.RouteDecision)
        assert (decision.replica_address, decision.attempt) == (a.address, 1)
        assert in_flight(r) == 1
        await ch.close()  # no grace: the call is dropped as a dying process's would be
        await eventually(lambda: in_flight(r) == 0)

        async with grpc.aio.insecure_channel(r.target) as ch2:
            stub = router_pb2_grpc.RouterStub(ch2)
            route = stub.Route()
            await route.write(request)
            assert isinstance(await route.read(), router_pb2.RouteDecision)
            await route.write(
                router_pb2.RouteUpdate(first_chunk=router_pb2.RouteFirstChunk(first_token_s=0.01))
            )
            await route.done_writing()
            assert await route.read() is grpc.aio.EOF
            assert await route.code() == grpc.StatusCode.OK
            await eventually(lambda: in_flight(r) == 0)

            route = stub.Route()
            await route.write(router_pb2.RouteUpdate(ended=router_pb2.RouteEnded()))
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await route.read()
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert in_flight(r) == 0


async def test_direct_routing_streams_over_mutual_tls_with_the_service_token(
    mesh: Mesh, tmp_path: Path
) -> None:
    """The gateway's own channels to the replicas carry the mesh's identity:
    its client certificate and the service token, as every inner hop does."""
    certs = write_throwaway_ca(tmp_path / "tls")
    options = MeshOptions(
        state=tmp_path,
        model=mesh.model,
        certs=certs,
        service_token=secrets.token_urlsafe(32),
        overrides={"gateway": {"routing": "direct"}},
    )
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            running_mesh(options, dependencies={"inference": {"engine": mesh.engine}})
        )
        secure = SecureMesh(
            targets=running.targets,
            admin_token=options.admin_token,
            service_token=options.service_token,
            certs=certs,
            model=mesh.model,
        )
        async with secure.tenant_client(await secure.new_api_key()) as client:
            chunks = [c async for c in client.generate(mesh.model, prompt="Hi", max_tokens=8)]
        assert chunks[-1].usage.completion_tokens == 8


async def test_replica_channels_close_the_least_recently_used_idle_ones() -> None:
    telemetry = setup("gateway", TelemetrySettings())
    channels = ReplicaChannels(telemetry, max_idle=1)
    try:
        # Channels connect lazily: nothing needs to listen at these addresses.
        a = channels.acquire("127.0.0.1:1")
        assert channels.acquire("127.0.0.1:1") is a  # one channel per address
        channels.acquire("127.0.0.1:2")
        channels.acquire("127.0.0.1:3")
        await channels.release("127.0.0.1:2")
        await channels.release("127.0.0.1:3")
        # Two idle, one allowed: the one released first goes; those in use stay.
        assert len(channels) == 2
        assert channels.acquire("127.0.0.1:3") is not None
        await channels.release("127.0.0.1:1")
        await channels.release("127.0.0.1:1")
        await channels.release("127.0.0.1:3")
        assert len(channels) == 1
    finally:
        await channels.aclose()
        telemetry.shutdown()
    assert len(channels) == 0
