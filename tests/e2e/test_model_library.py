"""The model library: a mesh serving two models (simulated replicas, one per
model, behind the one router) lists each with what its replica says (kind,
context length), what its configuration says (owner, description) and what
the price book says (the price in force, or unpriced), over gRPC ListModels
and over `/v1/models` with the official `openai` package; each model's
requests reach its own replica (a replica refuses any other model's name
with NOT_FOUND, so a request answered is a request routed right)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from openai import AsyncOpenAI

from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
)
from observability import setup
from observability.settings import TelemetrySettings
from services.inference.server import RunningInference
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.mesh import MeshOptions, RunningMesh, running_mesh
from tests.support import eventually

CHAT = "sim-chat"
OTHER = "sim-other"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
CHAT_CARD: dict[str, Any] = {"owner": "acme-labs", "description": "A tiny chat model for tests."}
OTHER_CARD: dict[str, Any] = {"owner": "other-lab", "description": "Another tiny model."}
# $0.15 prompt, $0.05 cached prompt, $0.60 completion per million tokens.
PROMPT, CACHED, COMPLETION = 150_000, 50_000, 600_000


@asynccontextmanager
async def second_replica() -> AsyncIterator[RunningInference]:
    telemetry = setup("inference", TelemetrySettings())
    settings = InferenceSettings(**SIM, **OTHER_CARD, model=OTHER, port=0, grace_period_s=0.5)
    try:
        async with serving_inference(settings, telemetry) as running:
            yield running
    finally:
        telemetry.shutdown()


@asynccontextmanager
async def two_model_mesh(state: Path) -> AsyncIterator[tuple[RunningMesh, str]]:
    """The mesh (its replica serves CHAT) with a replica of OTHER registered
    at the router, CHAT priced, and a tenant's API key."""
    options = MeshOptions(state=state, model=CHAT, overrides={"inference": SIM | CHAT_CARD})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh, second_replica() as other:
        async with grpc.aio.insecure_channel(mesh.target("router")) as ch:
            router = router_pb2_grpc.RouterStub(ch)
            await router.RegisterReplica(
                router_pb2.RegisterReplicaRequest(address=f"127.0.0.1:{other.port}")
            )

            async def both_serving() -> bool:
                listed = await router.ListReplicas(router_pb2.ListReplicasRequest())
                serving = [
                    r for r in listed.replicas if r.state == router_pb2.REPLICA_STATE_SERVING
                ]
                return len(serving) == 2

            await eventually(both_serving)
        async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
            auth = auth_pb2_grpc.AuthStub(ch)
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(
                    name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()
                ),
                metadata=admin,
            )
            key = await auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
            )
            price = billing_pb2.Price(
                model=CHAT,
                currency="USD",
                prompt_micros_per_million=PROMPT,
                cached_prompt_micros_per_million=CACHED,
                completion_micros_per_million=COMPLETION,
            )
            await billing_pb2_grpc.BillingStub(ch).SetPrice(
                billing_pb2.SetPriceRequest(price=price), metadata=admin
            )
        yield mesh, key.api_key


async def test_two_models_are_listed_described_and_routed(tmp_path: Path) -> None:
    async with two_model_mesh(tmp_path) as (mesh, api_key):
        caller = (("authorization", f"Bearer {api_key}"),)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as ch:
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            listed = await gateway.ListModels(gateway_pb2.ListModelsRequest(), metadata=caller)
            models = {m.name: m for m in listed.models}
            assert sorted(models) == [CHAT, OTHER]
            for name, card in ((CHAT, CHAT_CARD), (OTHER, OTHER_CARD)):
                model = models[name]
                assert model.kind == generation_pb2.MODEL_KIND_CHAT
                assert model.max_context_length > 0
                assert (model.owner, model.description) == (card["owner"], card["description"])
                assert list(model.adapters) == [] and model.base_model == ""
            chat = models[CHAT]
            assert chat.HasField("price") and not chat.unpriced
            assert (
                chat.price.currency,
                chat.price.prompt_micros_per_million,
                chat.price.cached_prompt_micros_per_million,
                chat.price.completion_micros_per_million,
            ) == ("USD", PROMPT, CACHED, COMPLETION)
            assert models[OTHER].unpriced and not models[OTHER].HasField("price")

            for name in (CHAT, OTHER, CHAT, OTHER):
                chunks = [
                    chunk
                    async for chunk in gateway.Generate(
                        generation_pb2.GenerateRequest(
                            model=name, prompt="The sea", max_tokens=4, ignore_eos=True
                        ),
                        metadata=caller,
                    )
                ]
                assert chunks[-1].usage.completion_tokens == 4

        async with AsyncOpenAI(
            base_url=f"http://{mesh.target('gateway', 'http_port')}/v1",
            api_key=api_key,
            max_retries=0,
        ) as client:
            page = [model async for model in client.models.list()]
            assert [m.id for m in page] == [CHAT, OTHER]
            assert [m.owned_by for m in page] == [CHAT_CARD["owner"], OTHER_CARD["owner"]]
            other = await client.models.retrieve(OTHER)
            extra = other.model_extra or {}
            assert other.object == "model" and other.owned_by == OTHER_CARD["owner"]
            assert extra["kind"] == "chat" and extra["max_model_len"] > 0
            assert extra["description"] == OTHER_CARD["description"]
            assert extra["adapters"] == [] and extra["parent"] is None
            assert extra["pricing"] == {"unpriced": True}
            chat_extra = (await client.models.retrieve(CHAT)).model_extra or {}
            assert chat_extra["pricing"] == {
                "unpriced": False,
                "currency": "USD",
                "prompt_micros_per_million": PROMPT,
                "cached_prompt_micros_per_million": CACHED,
                "completion_micros_per_million": COMPLETION,
                "effective_at": chat_extra["pricing"]["effective_at"],
            }
            completion = await client.completions.create(model=OTHER, prompt="Tides", max_tokens=3)
            assert completion.model == OTHER and completion.usage is not None
            assert completion.usage.completion_tokens == 3
