"""Which replica serves which model name (base models and LoRA adapters)."""

from __future__ import annotations

import grpc

from maas.v1 import generation_pb2, inference_pb2_grpc
from services.router.replicas import Replica


async def test_a_replica_serves_its_model_and_adapters() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
        replica = Replica("127.0.0.1:1", ch, inference_pb2_grpc.InferenceStub(ch))
        assert not replica.serves("tiny-llama")  # model not known yet
        replica.model = generation_pb2.ModelInfo(name="tiny-llama")
        replica.adapters = ("tiny-lora",)
        assert replica.serves("tiny-llama")
        assert replica.serves("tiny-lora")
        assert not replica.serves("other")
