"""Simulated replicas as the mesh sees them: the inference service's own
factory opens a simulated engine from settings (no vLLM) and serves
Generate and WatchLoad over real gRPC; a router built by its factory
routes over two of them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc, router_pb2, router_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.inference.server import RunningInference
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.inference.sim_engine import SimEngine
from services.router.server import serving as serving_router
from services.router.settings import RouterSettings

MODEL = "sim-tiny"


@asynccontextmanager
async def sim_replica(seed: int = 0) -> AsyncIterator[RunningInference]:
    telemetry = setup("inference", TelemetrySettings())
    settings = InferenceSettings(
        engine="sim",
        sim_profile="tiny-cpu",
        model=MODEL,
        seed=seed,
        port=0,
        stream_messages_per_s=0,
        grace_period_s=0.5,
    )
    try:
        async with serving_inference(settings, telemetry) as running:
            yield running
    finally:
        telemetry.shutdown()


def generate_request(prompt: str, max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, ignore_eos=True
    )


async def test_the_factory_serves_a_simulated_engine() -> None:
    async with (
        sim_replica() as replica,
        grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch,
    ):
        assert isinstance(replica.engine, SimEngine)
        stub = inference_pb2_grpc.InferenceStub(ch)
        info = await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
        assert info.model.name == MODEL
        watch = stub.WatchLoad(inference_pb2.WatchLoadRequest())
        first = await watch.read()
        assert isinstance(first, inference_pb2.Load) and first.running == 0
        chunks = [
            c
            async for c in stub.Generate(
                inference_pb2.InferenceGenerateRequest(request=generate_request("hello", 12))
            )
        ]
        assert chunks[-1].usage.completion_tokens == 12
        assert sum(len(c.token_ids) for c in chunks) == 12
        loads: list[Any] = []
        while not loads or loads[-1].running != 0:
            loads.append(await watch.read())
        assert any(load.running == 1 for load in loads)
        watch.cancel()


async def test_a_router_spreads_over_two_simulated_replicas() -> None:
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(sim_replica(seed)) for seed in (1, 2)]
        telemetry = setup("router", TelemetrySettings())
        stack.callback(telemetry.shutdown)
        settings = RouterSettings(
            port=0,
            grace_period_s=0.5,
            replicas=[f"127.0.0.1:{r.port}" for r in replicas],
            replica_choice="round_robin",
        )
        router = await stack.enter_async_context(serving_router(settings, telemetry))
        await router.wait_ready(10.0)
        ch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{router.port}"))
        stub = router_pb2_grpc.RouterStub(ch)
        for i in range(8):
            request = router_pb2.RouterGenerateRequest(
                request=generate_request(f"question {i}", 5),
                context=router_pb2.RequestContext(tenant_id="t"),
            )
            chunks = [c async for c in stub.Generate(request)]
            assert chunks[-1].usage.completion_tokens == 5
        engines = [r.engine for r in replicas]
        assert all(isinstance(e, SimEngine) and e.generated_tokens > 0 for e in engines)


def test_a_simulated_replica_never_imports_vllm() -> None:
    script = (
        "import asyncio, sys\n"
        "from observability import setup\n"
        "from observability.settings import TelemetrySettings\n"
        "from services.inference.server import serving\n"
        "from services.inference.settings import InferenceSettings\n"
        "async def main():\n"
        "    s = InferenceSettings(engine='sim', model='m', port=0)\n"
        "    async with serving(s, setup('inference', TelemetrySettings())):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "assert 'vllm' not in sys.modules, 'vllm was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


async def test_a_killed_simulated_engine_trips_the_watchdog() -> None:
    async with sim_replica() as replica:
        assert isinstance(replica.engine, SimEngine)
        assert not replica.failed.done()
        replica.engine.kill("injected failure")
        assert await asyncio.wait_for(replica.failed, 10.0) == "injected failure"
