"""LoRA adapters served by name next to the base model, on a second real
engine started for this module only (adapters change the engine's config)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from local_models.tiny_llama import build_tiny_adapter
from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.inference.server import serving
from services.inference.settings import InferenceSettings

ADAPTER = "tiny-lora"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def lora_target(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    adapter = build_tiny_adapter(tmp_path_factory.mktemp("lora") / ADAPTER)
    settings = InferenceSettings(
        model=str(tiny_model_path),
        kv_cache_memory_bytes=256 * 1024 * 1024,
        enforce_eager=True,
        max_num_seqs=8,
        lora_modules={ADAPTER: str(adapter)},
        max_lora_rank=8,
        port=0,
        grace_period_s=0,
        # One message per delta, as this test has always read them.
        stream_messages_per_s=0,
    )
    telemetry = setup("inference-lora", TelemetrySettings())
    # The factory opens the engine from settings, as `python -m services.inference` does.
    async with serving(settings, telemetry) as server:
        yield f"127.0.0.1:{server.port}"
    telemetry.shutdown()


async def greedy_tokens(stub: inference_pb2_grpc.InferenceAsyncStub, model: str) -> list[int]:
    request = inference_pb2.InferenceGenerateRequest(
        request=generation_pb2.GenerateRequest(
            model=model, prompt="hello there", max_tokens=8, temperature=0.0, ignore_eos=True
        )
    )
    return [t async for chunk in stub.Generate(request) for t in chunk.token_ids]


async def test_adapters_are_served_by_name(lora_target: str, tiny_model_path: Path) -> None:
    async with grpc.aio.insecure_channel(lora_target) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        info = await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
        assert list(info.adapters) == [ADAPTER]
        base = await greedy_tokens(stub, info.model.name)
        adapted = await greedy_tokens(stub, ADAPTER)
        assert len(base) == len(adapted) == 8
        assert base != adapted, "the adapter's weights should change the greedy output"
        assert await greedy_tokens(stub, ADAPTER) == adapted  # and deterministically so

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await greedy_tokens(stub, "no-such-adapter")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
