"""A tenant's private adapter generating for real through the whole mesh:
gateway (both routings), router, a simulated replica with one adapter slot
that fetches the weights from auth's registry on a miss. The adapter's
answer differs from the base model's, the second call is a hit (one load),
the router reports where it is loaded, the bill is under the base model, and
the official openai package uses it by name. Another tenant gets NOT_FOUND."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from local_models.tiny_llama import build_tiny_adapter
from maas.v1 import (
    adapter_pb2,
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
    usage_pb2,
)
from services.mesh import MeshOptions, RunningMesh, running_mesh
from tests.support import eventually

MODEL = "sim-tiny"
SIM: dict[str, Any] = {
    "engine": "sim",
    "sim_profile": "tiny-cpu",
    "stream_messages_per_s": 0,
    "adapter_slots": 1,
}
PROMPT = "The lighthouse keeper wrote"


async def new_key(mesh: RunningMesh, admin: tuple[tuple[str, str], ...]) -> str:
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        auth = auth_pb2_grpc.AuthStub(ch)
        tenant = await auth.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()),
            metadata=admin,
        )
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
        )
    return key.api_key


async def greedy(gateway: gateway_pb2_grpc.GatewayAsyncStub, model: str, key: str) -> list[int]:
    request = generation_pb2.GenerateRequest(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0.0, ignore_eos=True
    )
    metadata = (("authorization", f"Bearer {key}"),)
    return [
        t async for chunk in gateway.Generate(request, metadata=metadata) for t in chunk.token_ids
    ]


@pytest.mark.parametrize("routing", ["proxy", "direct"])
async def test_a_private_adapter_generates_for_its_tenant_only(
    tmp_path: Path, routing: str
) -> None:
    built = build_tiny_adapter(tmp_path / "lora", rank=8, seed=7)
    files = [
        adapter_pb2.AdapterUpload(
            spec=adapter_pb2.AdapterSpec(
                name="house-style",
                base_model=MODEL,
                config_json=(built / "adapter_config.json").read_bytes(),
            )
        ),
        adapter_pb2.AdapterUpload(weights_chunk=(built / "adapter_model.safetensors").read_bytes()),
    ]
    options = MeshOptions(
        state=tmp_path / "mesh",
        model=MODEL,
        overrides={"inference": SIM, "gateway": {"routing": routing}},
    )
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        a, b = await new_key(mesh, admin), await new_key(mesh, admin)

        async def upload() -> Any:
            for message in files:
                yield message

        async with (
            grpc.aio.insecure_channel(mesh.target("gateway")) as gw,
            grpc.aio.insecure_channel(mesh.targets["router"]) as rt,
        ):
            gateway = gateway_pb2_grpc.GatewayStub(gw)
            created = await gateway.CreateAdapter(
                upload(), metadata=(("authorization", f"Bearer {a}"),)
            )
            base = await greedy(gateway, MODEL, a)
            adapted = await greedy(gateway, "house-style", a)
            assert len(base) == len(adapted) == 12
            assert adapted != base, "the adapter's answer should be its own"
            assert await greedy(gateway, "house-style", a) == adapted

            # The replica loaded it once (the second call was a hit), and says so.
            router = router_pb2_grpc.RouterStub(rt)

            async def reported() -> bool:
                replicas = await router.ListReplicas(router_pb2.ListReplicasRequest())
                [replica] = replicas.replicas
                return list(replica.loaded_adapters) == [created.adapter_id]

            await eventually(reported)
            [replica] = (await router.ListReplicas(router_pb2.ListReplicasRequest())).replicas
            assert replica.adapter_slots == 1

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await greedy(gateway, "house-style", b)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            # Billed under the base model's name: three calls, one model.
            async def billed() -> bool:
                reply = await gateway.GetUsage(
                    gateway_pb2.GetUsageRequest(group_by=usage_pb2.USAGE_GROUPING_MODEL),
                    metadata=(("authorization", f"Bearer {a}"),),
                )
                return [(x.key, x.requests) for x in reply.buckets] == [(MODEL, 3)]

            await eventually(billed)

        # The official openai package, by the adapter's name.
        client = openai.AsyncOpenAI(
            base_url=f"http://{mesh.target('gateway', 'http_port')}/v1", api_key=a, max_retries=0
        )
        completion = await client.completions.create(
            model="house-style", prompt=PROMPT, max_tokens=12, temperature=0.0
        )
        assert completion.model == "house-style"
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        outsider = openai.AsyncOpenAI(
            base_url=f"http://{mesh.target('gateway', 'http_port')}/v1", api_key=b, max_retries=0
        )
        with pytest.raises(openai.NotFoundError):
            await outsider.completions.create(model="house-style", prompt=PROMPT, max_tokens=4)
        await asyncio.gather(client.close(), outsider.close())
