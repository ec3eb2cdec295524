"""Generate's trailing metadata tells where a request's time to first token
went (the router's wait, the replica's call to its first chunk): a real
router over one simulated replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc

from maas.v1 import generation_pb2, router_pb2, router_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.router.replicas import ReplicaSet
from services.router.server import routing
from services.router.servicer import (
    REPLICA_FIRST_CHUNK_METADATA_KEY,
    ROUTER_WAIT_METADATA_KEY,
)
from services.router.settings import RouterSettings
from tests.support import eventually

MODEL = "sim-tiny"


@asynccontextmanager
async def sim_mesh() -> AsyncIterator[router_pb2_grpc.RouterAsyncStub]:
    async with AsyncExitStack() as stack:
        replica_telemetry = setup("inference", TelemetrySettings())
        stack.callback(replica_telemetry.shutdown)
        settings = InferenceSettings(
            engine="sim", sim_profile="tiny-cpu", model=MODEL, port=0, grace_period_s=0
        )
        replica = await stack.enter_async_context(serving_inference(settings, replica_telemetry))
        telemetry = setup("router", TelemetrySettings())
        stack.callback(telemetry.shutdown)
        replicas = ReplicaSet([f"127.0.0.1:{replica.port}"], telemetry, retry_initial_s=0.05)
        await replicas.start()
        stack.push_async_callback(replicas.aclose)
        srv = await stack.enter_async_context(
            routing(RouterSettings(port=0, grace_period_s=0), telemetry, replicas)
        )
        ch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}"))
        stub = router_pb2_grpc.RouterStub(ch)

        async def up() -> bool:
            listed = await stub.ListReplicas(router_pb2.ListReplicasRequest())
            return any(r.state == router_pb2.REPLICA_STATE_SERVING for r in listed.replicas)

        await eventually(up)
        yield stub


async def test_the_trailers_carry_the_routers_wait_and_the_replicas_first_chunk() -> None:
    async with sim_mesh() as stub:
        call = stub.Generate(
            router_pb2.RouterGenerateRequest(
                request=generation_pb2.GenerateRequest(
                    model=MODEL, prompt="hi", max_tokens=4, ignore_eos=True
                ),
                context=router_pb2.RequestContext(tenant_id="t"),
            )
        )
        chunks = [c async for c in call]
        trailers = dict(await call.trailing_metadata() or ())
    assert sum(len(c.token_ids) for c in chunks) == 4
    router_wait_s = float(trailers[ROUTER_WAIT_METADATA_KEY])
    replica_s = float(trailers[REPLICA_FIRST_CHUNK_METADATA_KEY])
    assert router_wait_s >= 0.0
    # The replica's part holds the engine's queueing that its first chunk reported.
    assert replica_s >= chunks[0].queued_s >= 0.0
