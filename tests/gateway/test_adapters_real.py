"""What a simulated engine cannot serve, on real vLLM engines behind the
whole mesh: an adapter's base model must be a served base model, neither a
LoRA adapter the replicas serve by name nor an embedding model, and its name
never a served model's (the replicas' own adapters included)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from local_models.tiny_llama import build_tiny_adapter
from maas.v1 import gateway_pb2_grpc
from services.inference.engine import Engine
from services.inference.settings import InferenceSettings
from tests.gateway.test_adapters import refused, stream, uploads
from tests.mesh import Mesh, open_test_mesh, tenant_factory
from tests.support import bad_request_fields

STATIC = "tiny-lora"
CONFIG = json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}).encode()
HEADER = json.dumps({"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}).encode()
WEIGHTS = len(HEADER).to_bytes(8, "little") + HEADER + bytes(8)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def lora_mesh(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    """The tiny model with one adapter of the operator's, served by name."""
    from services.inference.vllm_engine import open_vllm_engine

    adapter = build_tiny_adapter(tmp_path_factory.mktemp("lora") / STATIC)
    settings = InferenceSettings(
        model=str(tiny_model_path),
        # The session's other engines keep vLLM's metrics registry.
        engine_metrics=False,
        kv_cache_memory_bytes=128 * 1024 * 1024,
        enforce_eager=True,
        max_num_seqs=8,
        lora_modules={STATIC: str(adapter)},
        max_lora_rank=8,
    )
    async with (
        open_vllm_engine(settings) as engine,
        open_test_mesh(engine, tmp_path_factory.mktemp("lora-mesh")) as mesh,
    ):
        yield mesh


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def embed_only_mesh(
    vllm_embed_engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    async with open_test_mesh(vllm_embed_engine, tmp_path_factory.mktemp("embed-only")) as mesh:
        yield mesh


async def create_refusal(mesh: Mesh, name: str, base: str) -> grpc.aio.AioRpcError:
    key = await tenant_factory(mesh)()
    metadata = (("authorization", f"Bearer {key.api_key}"),)
    async with grpc.aio.insecure_channel(mesh.gateway) as ch:
        gateway = gateway_pb2_grpc.GatewayStub(ch)
        return await refused(
            gateway.CreateAdapter(stream(uploads(name, base, CONFIG, WEIGHTS)), metadata=metadata)
        )


async def test_an_adapter_is_no_base_model_and_no_name_of_its_own(lora_mesh: Mesh) -> None:
    on_adapter = await create_refusal(lora_mesh, "mine", STATIC)
    assert on_adapter.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(on_adapter) == ["base_model"]
    taken = await create_refusal(lora_mesh, STATIC, lora_mesh.model)
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_an_embedding_model_is_no_base_model(embed_only_mesh: Mesh) -> None:
    err = await create_refusal(embed_only_mesh, "mine", embed_only_mesh.model)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err) == ["base_model"]
