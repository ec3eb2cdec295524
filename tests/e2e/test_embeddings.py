"""Embeddings end to end: the tiny embedding model on vLLM's pooling runner
behind the whole mesh, driven by the official `openai` package over HTTP and
by the gRPC Embed; billed by input tokens in the ledger."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator

import grpc
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from maas.v1 import embedding_pb2, gateway_pb2_grpc, router_pb2, router_pb2_grpc
from maas_cli.client import MaasClient
from services.inference.engine import Engine
from tests.e2e.test_sim_replicas import sim_replica
from tests.mesh import Mesh, TenantKey, open_test_mesh, tenant_factory
from tests.support import eventually

WIDTH = 256  # local_models.tiny_embed.HIDDEN


@pytest_asyncio.fixture(scope="session")
async def embed_mesh(
    vllm_embed_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    async with open_test_mesh(vllm_embed_engine, tmp_path_factory.mktemp("embed-mesh")) as mesh:
        yield mesh


@pytest_asyncio.fixture
async def embed_tenant(embed_mesh: Mesh) -> TenantKey:
    return await tenant_factory(embed_mesh)()


@pytest_asyncio.fixture
async def client(embed_mesh: Mesh, embed_tenant: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    # No retries: an error must reach the test, not be waited out.
    async with AsyncOpenAI(
        base_url=f"{embed_mesh.http}/v1", api_key=embed_tenant.api_key, max_retries=0
    ) as client:
        yield client


async def billed(mesh: Mesh, tenant: TenantKey, requests: int) -> tuple[int, int]:
    """(prompt, completion) tokens in the ledger once it holds `requests` requests."""
    async with MaasClient(mesh.gateway, tenant.api_key) as maas:

        async def recorded() -> bool:
            return (await maas.usage()).requests == requests

        await eventually(recorded)
        summary = await maas.usage()
    return summary.prompt_tokens, summary.completion_tokens


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def test_one_text_and_a_batch_are_embedded_and_billed_by_input_tokens(
    embed_mesh: Mesh, embed_tenant: TenantKey, client: AsyncOpenAI
) -> None:
    one = await client.embeddings.create(
        model=embed_mesh.model, input="the sea", encoding_format="float"
    )
    assert len(one.data) == 1 and one.data[0].index == 0
    assert len(one.data[0].embedding) == WIDTH
    assert norm(one.data[0].embedding) == pytest.approx(1.0, abs=1e-3)
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens

    texts = ["the sea", "a much longer sentence about mountains and rivers", "x"]
    batch = await client.embeddings.create(
        model=embed_mesh.model, input=texts, encoding_format="float"
    )
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert all(len(d.embedding) == WIDTH for d in batch.data)
    # The same text embeds alike alone and in a batch; different texts differ.
    assert batch.data[0].embedding == pytest.approx(one.data[0].embedding, abs=2e-2)
    assert batch.data[1].embedding != pytest.approx(batch.data[0].embedding, abs=2e-2)
    assert batch.usage.prompt_tokens > one.usage.prompt_tokens

    total = one.usage.prompt_tokens + batch.usage.prompt_tokens
    assert await billed(embed_mesh, embed_tenant, 2) == (total, 0)


async def test_base64_decodes_to_the_float_vector(embed_mesh: Mesh, client: AsyncOpenAI) -> None:
    floats = await client.embeddings.create(
        model=embed_mesh.model, input=["tide", "wave"], encoding_format="float"
    )
    encoded = await client.embeddings.create(
        model=embed_mesh.model, input=["tide", "wave"], encoding_format="base64"
    )
    for as_float, as_base64 in zip(floats.data, encoded.data, strict=True):
        assert isinstance(as_base64.embedding, str)
        raw = base64.b64decode(as_base64.embedding)
        decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert decoded == pytest.approx(as_float.embedding, abs=2e-2)
    # The SDK's default (base64 on the wire, floats to the caller) works too.
    default = await client.embeddings.create(model=embed_mesh.model, input="tide")
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=2e-2)


async def test_token_ids_and_dimensions(embed_mesh: Mesh, client: AsyncOpenAI) -> None:
    ids = await client.embeddings.create(
        model=embed_mesh.model, input=[[5, 6, 7], [8, 9]], encoding_format="float"
    )
    assert ids.usage.prompt_tokens == 5 and len(ids.data) == 2
    short = await client.embeddings.create(
        model=embed_mesh.model, input="the sea", dimensions=64, encoding_format="float"
    )
    assert len(short.data[0].embedding) == 64
    assert norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["fine", ""]}, "input[1]"),
        ({"input": [[1, 2], []]}, "input[1]"),
        ({"input": ["x"] * 129}, "input"),
        ({"input": [[10**6]]}, "input[0]"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        # Not a width the model was trained to truncate to (vLLM's own check).
        ({"input": "x", "dimensions": 100}, "dimensions"),
    ],
)
async def test_bad_input_is_a_400_naming_the_parameter(
    embed_mesh: Mesh, client: AsyncOpenAI, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=embed_mesh.model, **body)  # type: ignore[arg-type]
    assert caught.value.param == param, caught.value.message


async def test_grpc_embed_and_its_bad_input(embed_mesh: Mesh, embed_tenant: TenantKey) -> None:
    metadata = (("authorization", f"Bearer {embed_tenant.api_key}"),)
    async with grpc.aio.insecure_channel(embed_mesh.gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        request = embedding_pb2.EmbedRequest(model=embed_mesh.model)
        request.inputs.add(text="the sea")
        request.inputs.add().token_ids.ids.extend([5, 6, 7])
        response = await stub.Embed(request, metadata=metadata)
        assert response.model == embed_mesh.model
        assert [len(e.values) for e in response.embeddings] == [WIDTH, WIDTH]
        assert response.usage.prompt_tokens > 3 and response.usage.completion_tokens == 0

        empty = embedding_pb2.EmbedRequest(model=embed_mesh.model)
        empty.inputs.add(text="")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(empty, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs[0]" in (caught.value.details() or "")


async def test_a_generation_model_asked_to_embed_is_refused_by_name(
    embed_mesh: Mesh, client: AsyncOpenAI
) -> None:
    """A simulated chat replica joins the mesh: asking it for embeddings is a
    400 naming `model` and saying why, not a generic failure."""
    async with (
        sim_replica() as replica,
        grpc.aio.insecure_channel(embed_mesh.targets["router"]) as ch,
    ):
        router = router_pb2_grpc.RouterStub(ch)
        address = f"127.0.0.1:{replica.port}"
        await router.RegisterReplica(router_pb2.RegisterReplicaRequest(address=address))
        chat_model = replica.engine.model_info.name
        try:
            caught: list[openai.BadRequestError] = []

            async def refused() -> bool:
                try:
                    await client.embeddings.create(model=chat_model, input="hi")
                except openai.NotFoundError:
                    return False  # the gateway's model list is not fresh yet
                except openai.BadRequestError as err:
                    caught.append(err)
                    return True
                return False

            await eventually(refused)
            assert caught[0].param == "model"
            assert "generation model" in caught[0].message
        finally:
            await router.DeregisterReplica(router_pb2.DeregisterReplicaRequest(address=address))
