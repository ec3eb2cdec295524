"""Hostile tenants and request ids: a caller's x-request-id is a label and a
tenant-scoped idempotency key, never the id that keys money or capacity.

Against the real mesh (real engine, auth, router); each case runs a
well-behaved bystander tenant beside the attack."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from maas.v1 import (
    auth_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    metering_pb2,
    router_pb2,
    router_pb2_grpc,
)
from maas_cli.client import MaasClient
from tests.hostile.conftest import Mesh, TenantFactory, TenantKey, bystander, set_plan
from tests.support import bad_request_fields, eventually, free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    """What one Generate call saw."""

    initial: dict[str, str] = field(default_factory=dict)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    code: grpc.StatusCode = grpc.StatusCode.OK
    error: grpc.aio.AioRpcError | None = None


async def generate(
    mesh: Mesh,
    tenant: TenantKey,
    client_request_id: str | None,
    *,
    model: str | None = None,
    max_tokens: int = 24,
    stop_token_ids: tuple[int, ...] = (),
) -> Outcome:
    metadata = [("authorization", f"Bearer {tenant.api_key}")]
    if client_request_id is not None:
        metadata.append(("x-request-id", client_request_id))
    outcome = Outcome()
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Generate(
            generation_pb2.GenerateRequest(
                model=model or mesh.model,
                prompt="Tell me about the sea.",
                max_tokens=max_tokens,
                ignore_eos=True,
                stop_token_ids=stop_token_ids,
            ),
            metadata=tuple(metadata),
        )
        try:
            outcome.initial = {k: str(v) for k, v in (await call.initial_metadata()) or ()}
            async for chunk in call:
                outcome.prompt_tokens = chunk.usage.prompt_tokens
                outcome.completion_tokens = chunk.usage.completion_tokens
        except grpc.aio.AioRpcError as err:
            outcome.code, outcome.error = err.code(), err
    return outcome


def error_metadata(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    return {}


async def billed(mesh: Mesh, tenant: TenantKey) -> tuple[int, int, int]:
    async with MaasClient(mesh.gateway, tenant.api_key) as client:
        usage = await client.usage()
    return usage.requests, usage.prompt_tokens, usage.completion_tokens


async def replica_states(mesh: Mesh) -> list[int]:
    async with grpc.aio.insecure_channel(mesh.targets["router"]) as ch:
        listed = await router_pb2_grpc.RouterStub(ch).ListReplicas(router_pb2.ListReplicasRequest())
    return [r.state for r in listed.replicas]


async def test_six_concurrent_calls_with_one_request_id_on_a_plan_of_one(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker, calm = await new_tenant(), await new_tenant()
    await set_plan(mesh, attacker.tenant_id, auth_pb2.Plan(max_concurrent_requests=1))
    async with bystander(mesh, calm):
        outcomes = await asyncio.gather(
            *(generate(mesh, attacker, "same-id", max_tokens=64) for _ in range(6))
        )
    ran = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    refused = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert len(ran) == 1 and ran[0].completion_tokens == 64
    assert {o.code for o in refused} <= {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,  # came after the one that ran had finished
    }
    # Every call got its own mesh id; none is the caller's.
    mesh_ids = {o.initial["x-request-id"] for o in outcomes}
    assert len(mesh_ids) == 6 and "same-id" not in mesh_ids
    assert all(o.initial["x-client-request-id"] == "same-id" for o in outcomes)

    async def settled() -> bool:
        return (await billed(mesh, attacker))[0] == 1

    await eventually(settled)
    assert await billed(mesh, attacker) == (1, ran[0].prompt_tokens, ran[0].completion_tokens)
    assert await replica_states(mesh) == [router_pb2.REPLICA_STATE_SERVING]


async def test_the_same_key_from_two_tenants_both_run(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    one, two, calm = await new_tenant(), await new_tenant(), await new_tenant()
    async with bystander(mesh, calm):
        first, second = await asyncio.gather(
            generate(mesh, one, "shared-key"), generate(mesh, two, "shared-key")
        )
    assert first.code == second.code == grpc.StatusCode.OK
    assert first.completion_tokens == second.completion_tokens == 24


async def test_a_completed_keys_replay_is_already_exists_and_not_billed(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker, calm = await new_tenant(), await new_tenant()
    async with bystander(mesh, calm):
        first = await generate(mesh, attacker, "order-1")
        assert first.code == grpc.StatusCode.OK

        async def settled() -> bool:
            return (await billed(mesh, attacker))[0] == 1

        await eventually(settled)
        replay = await generate(mesh, attacker, "order-1")
    assert replay.code == grpc.StatusCode.ALREADY_EXISTS
    assert replay.error is not None
    assert error_metadata(replay.error)["request_id"] == first.initial["x-request-id"]
    assert replay.completion_tokens == 0
    assert await billed(mesh, attacker) == (1, first.prompt_tokens, first.completion_tokens)


async def test_a_key_whose_request_was_refused_downstream_can_be_retried(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    tenant, calm = await new_tenant(), await new_tenant()
    async with bystander(mesh, calm):
        # Reserved, then refused by the replica (a stop token past the
        # vocabulary, which only the engine knows): nothing ran.
        past_vocab = mesh.engine.model_info.vocab_size + 1
        refused = await generate(mesh, tenant, "retry-me", stop_token_ids=(past_vocab,))
        assert refused.code != grpc.StatusCode.OK and refused.completion_tokens == 0

        async def retried() -> bool:
            # The release that frees the key is off the request path.
            return (await generate(mesh, tenant, "retry-me")).code == grpc.StatusCode.OK

        await eventually(retried)
    assert (await billed(mesh, tenant))[0] == 1


async def test_a_bad_request_id_is_invalid_argument_naming_it(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    tenant, calm = await new_tenant(), await new_tenant()
    async with bystander(mesh, calm):
        outcomes = [
            await generate(mesh, tenant, bad) for bad in ("x" * 129, "has space", "semi;colon")
        ]
    for outcome in outcomes:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert outcome.error is not None
        assert bad_request_fields(outcome.error) == ["x-request-id"]
        assert "x-client-request-id" not in outcome.initial
    assert (await billed(mesh, tenant))[0] == 0


LIVE_TOKENS = 1500


async def test_no_two_live_engine_requests_share_an_id(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    calm = await new_tenant()
    request = inference_pb2.InferenceGenerateRequest(
        request=generation_pb2.GenerateRequest(
            # Long enough to be still running when the second arrives on a
            # starved machine (200 tokens once ended first, and the second then
            # rightly ran: no live request held the id).
            model=mesh.model,
            prompt="Go on",
            max_tokens=LIVE_TOKENS,
            ignore_eos=True,
        )
    )
    async with bystander(mesh, calm), grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        first = stub.Generate(request, metadata=(("x-request-id", "engine-dup"),))
        assert (await first.read()) is not grpc.aio.EOF  # live in the engine
        second = stub.Generate(request, metadata=(("x-request-id", "engine-dup"),))
        try:
            async for _ in second:
                pass
            raise AssertionError("a second live request with the same id ran")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        last = None
        while (chunk := await first.read()) is not grpc.aio.EOF:
            last = chunk
        assert isinstance(last, generation_pb2.GenerateResponse)
        assert last.usage.completion_tokens == LIVE_TOKENS


async def start_gateway(mesh: Mesh, port: int, outbox: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "MAAS_GATEWAY_PORT": str(port),
        "MAAS_GATEWAY_HTTP_PORT": "null",
        "MAAS_GATEWAY_ROUTER_ADDRESS": mesh.targets["router"],
        "MAAS_GATEWAY_AUTH_ADDRESS": mesh.targets["auth"],
        "MAAS_GATEWAY_ANOMALY_ADDRESS": mesh.targets["anomaly"],
        "MAAS_GATEWAY_USAGE_OUTBOX_PATH": str(outbox),
        # Often, so the test need not stream for long before the kill.
        "MAAS_GATEWAY_USAGE_PROGRESS_INTERVAL_S": "0.2",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        request = health_pb2.HealthCheckRequest(service="maas.v1.Gateway")
        async for update in health_pb2_grpc.HealthStub(ch).Watch(
            request, wait_for_ready=True, timeout=60
        ):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
    return process


def progress_on_disk(outbox: Path) -> int:
    """Completion tokens of the progress record waiting in (or already sent
    from) the gateway's outbox; 0 when none is there."""
    with sqlite3.connect(outbox) as db:
        rows = db.execute("SELECT record FROM outbox").fetchall()
    records = [metering_pb2.UsageRecord.FromString(r[0]) for r in rows]
    return max((r.completion_tokens for r in records), default=0)


async def test_a_gateway_killed_mid_stream_bills_what_it_streamed_and_frees_the_slot(
    mesh: Mesh, new_tenant: TenantFactory, tmp_path: Path
) -> None:
    tenant, calm = await new_tenant(), await new_tenant()
    await set_plan(mesh, tenant.tenant_id, auth_pb2.Plan(max_concurrent_requests=1))
    port, outbox = free_port(), tmp_path / "outbox.db"
    gateway = await start_gateway(mesh, port, outbox)
    streamed = 0
    async with bystander(mesh, calm):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = gateway_pb2_grpc.GatewayStub(ch).Generate(
                generation_pb2.GenerateRequest(
                    model=mesh.model, prompt="Go on", max_tokens=1500, ignore_eos=True
                ),
                metadata=(("authorization", f"Bearer {tenant.api_key}"),),
            )
            try:
                async for chunk in call:
                    streamed = chunk.usage.completion_tokens
                    if streamed >= 40 and (
                        await asyncio.to_thread(progress_on_disk, outbox) >= 40
                        or (await billed(mesh, tenant))[2] >= 40
                    ):
                        gateway.kill()  # SIGKILL: no clean-up of any kind
                        await gateway.wait()
                        break
            except grpc.aio.AioRpcError:
                pass  # the connection died with the gateway
        assert gateway.returncode == -signal.SIGKILL
        restarted = await start_gateway(mesh, port, outbox)
        try:

            async def billed_what_was_streamed() -> bool:
                requests, _, completion = await billed(mesh, tenant)
                return requests == 1 and 40 <= completion <= 1500

            await eventually(billed_what_was_streamed)

            # The slot comes back within one lease (30 s), not the old 600 s.
            async def slot_back() -> bool:
                outcome = await generate(mesh, tenant, None, max_tokens=4)
                return outcome.code == grpc.StatusCode.OK

            await eventually(slot_back, within_s=60)
        finally:
            restarted.terminate()
            await restarted.wait()
    assert (await billed(mesh, tenant))[0] == 2  # the stream cut short, and the retry
