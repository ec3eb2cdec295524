"""Stream pacing set by the consumer: a gateway with a small message budget
asks each replica for a long interval between messages, so many streams
through it arrive in fewer, larger messages, with every token exactly once
and billed exactly. The replica and the router refuse an interval past its
bounds, naming the field. A whole mesh over the simulated engine."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from services.mesh import MeshOptions, RunningMesh, running_mesh
from tests.support import bad_request_fields, eventually

MODEL = "sim-tiny"
# The replicas pace nothing on their own: what merges tokens is the gateway's ask.
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
STREAMS, TOKENS = 16, 64


def request(i: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=MODEL, prompt=f"Tell me about tide {i}.", max_tokens=TOKENS, ignore_eos=True, seed=i
    )


async def api_key(mesh: RunningMesh, admin_token: str) -> str:
    admin = (("authorization", f"Bearer {admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.target("auth")) as ch:
        auth = auth_pb2_grpc.AuthStub(ch)
        tenant = await auth.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()),
            metadata=admin,
        )
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
        )
    return key.api_key


@pytest_asyncio.fixture(params=["direct", "proxy"])
async def paced_mesh(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[RunningMesh, str]]:
    options = MeshOptions(
        state=tmp_path,
        model=MODEL,
        overrides={
            "inference": SIM,
            # One message a second over all streams: every stream asks the
            # longest interval a caller may ask (1 s).
            "gateway": {"routing": request.param, "stream_messages_per_s": 1},
        },
    )
    async with running_mesh(options) as mesh:
        yield mesh, await api_key(mesh, options.admin_token)


async def test_many_streams_arrive_in_fewer_larger_messages_each_token_once_billed_exactly(
    paced_mesh: tuple[RunningMesh, str],
) -> None:
    mesh, key = paced_mesh
    caller = (("authorization", f"Bearer {key}"),)
    async with (
        grpc.aio.insecure_channel(mesh.target("gateway")) as gw_ch,
        grpc.aio.insecure_channel(mesh.target("inference")) as replica_ch,
    ):
        gateway = gateway_pb2_grpc.GatewayStub(gw_ch)
        replica = inference_pb2_grpc.InferenceStub(replica_ch)

        async def through_gateway(i: int) -> list[generation_pb2.GenerateResponse]:
            return [c async for c in gateway.Generate(request(i), metadata=caller)]

        async def from_replica(i: int) -> list[generation_pb2.GenerateResponse]:
            plain = inference_pb2.InferenceGenerateRequest(request=request(i))
            return [c async for c in replica.Generate(plain)]

        paced = await asyncio.gather(*(through_gateway(i) for i in range(STREAMS)))
        # The same generations asked of the replica by nobody's budget: a
        # message an engine step, and the tokens each paced stream must carry.
        plain = await asyncio.gather(*(from_replica(i) for i in range(STREAMS)))

        async def all_billed() -> bool:
            reply = await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=caller)
            return reply.summary.requests == STREAMS

        await eventually(all_billed)
        usage = (await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=caller)).summary

    assert sum(len(c.token_ids) for s in plain for c in s) == STREAMS * TOKENS
    for i, (got, expected) in enumerate(zip(paced, plain, strict=True)):
        # Every token exactly once, in order: the same as the replica made.
        assert [t for c in got for t in c.token_ids] == [t for c in expected for t in c.token_ids]
        assert "".join(c.text for c in got) == "".join(c.text for c in expected), i
        assert got[-1].usage.completion_tokens == TOKENS
        assert got[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    # One second between messages against a few milliseconds a token: the
    # first, the last, and a handful between, where unpaced there is about
    # one a token (one an engine step).
    messages = sum(len(s) for s in paced)
    assert STREAMS * 2 <= messages <= sum(len(s) for s in plain) // 4
    # Billed exactly what was streamed.
    assert usage.completion_tokens == STREAMS * TOKENS
    assert usage.prompt_tokens == sum(s[-1].usage.prompt_tokens for s in paced)


BAD_INTERVALS = [-1.0, 1.5, math.inf, math.nan]


@pytest_asyncio.fixture(scope="module")
async def plain_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningMesh]:
    options = MeshOptions(
        state=tmp_path_factory.mktemp("pacing"), model=MODEL, overrides={"inference": SIM}
    )
    async with running_mesh(options) as mesh:
        yield mesh


@pytest.mark.parametrize("bad", BAD_INTERVALS)
async def test_the_replica_refuses_an_interval_past_its_bounds_naming_it(
    plain_mesh: RunningMesh, bad: float
) -> None:
    async with grpc.aio.insecure_channel(plain_mesh.target("inference")) as ch:
        call = inference_pb2_grpc.InferenceStub(ch).Generate(
            inference_pb2.InferenceGenerateRequest(request=request(0), min_message_interval_s=bad)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(refused.value) == ["min_message_interval_s"]


@pytest.mark.parametrize("bad", BAD_INTERVALS)
async def test_the_router_refuses_an_interval_past_its_bounds_naming_it(
    plain_mesh: RunningMesh, bad: float
) -> None:
    routed = router_pb2.RouterGenerateRequest(
        request=request(0),
        context=router_pb2.RequestContext(tenant_id="t"),
        min_message_interval_s=bad,
    )
    async with grpc.aio.insecure_channel(plain_mesh.target("router")) as ch:
        router = router_pb2_grpc.RouterStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as proxied:
            await router.Generate(routed).read()
        route = router.Route(iter([router_pb2.RouteUpdate(request=routed)]))
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await route.read()
    for refused in (proxied.value, direct.value):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(refused) == ["min_message_interval_s"]
