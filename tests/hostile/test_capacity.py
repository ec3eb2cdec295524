"""A tenant whose requests fail by its own doing (deadlines that expire
mid-stream, cancels right after the first token, input the engine refuses)
cannot take the model's only replica out of rotation: the router keeps it
SERVING, at full concurrency, and a second tenant completes every request."""

from __future__ import annotations

import asyncio

import grpc

from maas.v1 import auth_pb2, gateway_pb2_grpc, generation_pb2, router_pb2, router_pb2_grpc
from maas_cli.client import MaasClient
from tests.hostile.conftest import Mesh, TenantFactory, TenantKey, bystander, set_plan

# Of each kind of self-inflicted failure, this many at once: far past the
# router's three failures in a row that would eject a replica.
BURST = 8
# Far past the tiny model's vocabulary of 4096: only the engine knows the
# vocabulary, so the replica refuses it (a bad constraint, say, the gateway
# refuses itself and the replica never sees it).
OUT_OF_VOCAB = 99_999


async def expire_mid_stream(mesh: Mesh, key: TenantKey, i: int) -> grpc.StatusCode:
    async with MaasClient(mesh.gateway, key.api_key) as client:
        try:
            async for _ in client.generate(
                mesh.model, prompt=f"Go on {i}", max_tokens=1500, timeout_s=0.3
            ):
                pass
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def cancel_after_first_token(mesh: Mesh, key: TenantKey, i: int) -> grpc.StatusCode:
    async with MaasClient(mesh.gateway, key.api_key) as client:
        stream = client.generate(mesh.model, prompt=f"Then {i}", max_tokens=1500)
        async for _ in stream:
            break
        await stream.aclose()  # cancels the call
    return grpc.StatusCode.CANCELLED


async def refused_input(mesh: Mesh, key: TenantKey, i: int) -> grpc.StatusCode:
    request = generation_pb2.GenerateRequest(model=mesh.model, prompt=f"Bad {i}", max_tokens=16)
    request.stop_token_ids.append(OUT_OF_VOCAB)
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Generate(
            request, metadata=(("authorization", f"Bearer {key.api_key}"),)
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_a_tenant_failing_by_its_own_doing_never_takes_the_replica_down(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    # Room for the whole burst at once: the attack is the failures, not the load.
    await set_plan(mesh, attacker.tenant_id, auth_pb2.Plan(max_concurrent_requests=64))
    seen: list[router_pb2.Replica] = []
    attacking = True

    async with grpc.aio.insecure_channel(mesh.targets["router"]) as ch:
        router = router_pb2_grpc.RouterStub(ch)

        async def watch_replicas() -> None:
            while attacking:
                listed = await router.ListReplicas(router_pb2.ListReplicasRequest())
                seen.extend(listed.replicas)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_replicas())
        async with bystander(mesh, await new_tenant(), requests=6):
            for _ in range(2):  # two waves: failures in a row past any threshold
                expired, cancelled, refused = await asyncio.gather(
                    asyncio.gather(*(expire_mid_stream(mesh, attacker, i) for i in range(BURST))),
                    asyncio.gather(
                        *(cancel_after_first_token(mesh, attacker, i) for i in range(BURST))
                    ),
                    asyncio.gather(*(refused_input(mesh, attacker, i) for i in range(BURST))),
                )
                assert set(expired) == {grpc.StatusCode.DEADLINE_EXCEEDED}
                assert set(refused) == {grpc.StatusCode.INVALID_ARGUMENT}
                assert len(cancelled) == BURST
        attacking = False
        await watcher
        [after] = (await router.ListReplicas(router_pb2.ListReplicasRequest())).replicas

    assert seen, "the replica list was never read during the attack"
    assert {r.state for r in seen} == {router_pb2.REPLICA_STATE_SERVING}
    assert not any(r.probing for r in seen)
    assert after.state == router_pb2.REPLICA_STATE_SERVING
    assert after.consecutive_failures == 0
    assert not after.probing
