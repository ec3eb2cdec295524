"""Private adapters loaded and unloaded at run time in a real vLLM engine
(a second engine, started for this module only: LoRA changes the engine's
config), one slot: a miss loads, the next adapter evicts it, and a reload
gives the same greedy tokens."""

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
from services.common.errors import NotFoundError
from services.inference.adapter_slots import FetchedAdapter
from services.inference.server import serving
from services.inference.settings import InferenceSettings

A, B = "ad-" + "a" * 24, "ad-" + "b" * 24


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def slots_target(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    root = tmp_path_factory.mktemp("adapters")
    # Two adapters of different weights (seeds) and ranks.
    dirs = {A: build_tiny_adapter(root / A, rank=8, seed=1), B: build_tiny_adapter(root / B, 4, 2)}

    async def fetch(adapter_id: str) -> FetchedAdapter:
        if adapter_id not in dirs:
            raise NotFoundError(f"adapter {adapter_id!r} not found")
        return FetchedAdapter(dirs[adapter_id], tiny_model_path.name)

    settings = InferenceSettings(
        model=str(tiny_model_path),
        kv_cache_memory_bytes=256 * 1024 * 1024,
        enforce_eager=True,
        max_num_seqs=8,
        adapter_slots=1,
        # Never dialled: the adapters come from the fetch given to serving.
        registry_address="127.0.0.1:1",
        max_lora_rank=8,
        # The session's engine keeps the process-wide vllm:* metrics.
        engine_metrics=False,
        port=0,
        grace_period_s=0,
        stream_messages_per_s=0,
    )
    telemetry = setup("inference-adapter-slots", TelemetrySettings())
    async with serving(settings, telemetry, adapter_fetch=fetch) as server:
        yield f"127.0.0.1:{server.port}"
    telemetry.shutdown()


async def greedy(
    stub: inference_pb2_grpc.InferenceAsyncStub, model: str, adapter: str
) -> list[int]:
    request = inference_pb2.InferenceGenerateRequest(
        request=generation_pb2.GenerateRequest(
            model=model, prompt="hello there", max_tokens=8, temperature=0.0, ignore_eos=True
        ),
        adapter_id=adapter,
    )
    return [t async for chunk in stub.Generate(request) for t in chunk.token_ids]


async def test_one_slot_loads_evicts_and_reloads(slots_target: str) -> None:
    async with grpc.aio.insecure_channel(slots_target) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        info = await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
        assert info.adapter_slots == 1
        model = info.model.name
        base = await greedy(stub, model, "")
        with_a = await greedy(stub, model, A)
        assert len(with_a) == 8 and with_a != base, "adapter A's weights change the output"
        load = await stub.GetLoad(inference_pb2.GetLoadRequest())
        assert list(load.loaded_adapters) == [A] and load.adapter_loads == 1

        with_b = await greedy(stub, model, B)
        assert with_b not in (base, with_a)
        load = await stub.GetLoad(inference_pb2.GetLoadRequest())
        assert list(load.loaded_adapters) == [B] and load.adapter_loads == 2

        assert await greedy(stub, model, A) == with_a  # reloaded under a fresh id: same weights
        assert await greedy(stub, model, "") == base  # the base model untouched
        load = await stub.GetLoad(inference_pb2.GetLoadRequest())
        assert list(load.loaded_adapters) == [A] and load.adapter_loads == 3
