"""maas.v1.Inference over gRPC: capacity, live load, abort by rpc and by
cancel, and rich INVALID_ARGUMENT details."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from services.inference.settings import cpu_engine_environment
from services.inference.watchdog import EXIT_ENGINE_FAILED
from tests.mesh import Mesh
from tests.support import bad_request_fields, eventually, free_port

T = TypeVar("T")


async def read(call: grpc.aio.UnaryStreamCall[Any, T]) -> T:
    """The next message; the stream must not have ended."""
    message = await call.read()
    assert message is not grpc.aio.EOF
    return cast(T, message)


def request(**fields: object) -> inference_pb2.InferenceGenerateRequest:
    return inference_pb2.InferenceGenerateRequest(
        request=generation_pb2.GenerateRequest(**fields)  # type: ignore[arg-type]
    )


async def test_replica_announces_model_and_capacity(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        info = await inference_pb2_grpc.InferenceStub(ch).GetModelInfo(
            inference_pb2.GetModelInfoRequest()
        )
    assert info.model.name == mesh.model
    assert info.model.max_context_length == 2048
    assert info.model.vocab_size == 4096
    assert info.max_num_seqs == 64
    assert info.kv_cache_tokens > 0


async def test_abort_rpc_frees_the_engine(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        call = stub.Generate(
            request(model=mesh.model, prompt="Go on", max_tokens=1500, ignore_eos=True),
            metadata=(("x-request-id", "to-abort"),),
        )
        first = await read(call)
        assert first.usage.completion_tokens >= 1
        reply = await stub.Abort(inference_pb2.AbortRequest(request_ids=["to-abort", "nope"]))
        assert list(reply.aborted) == ["to-abort"]
        chunks: list[generation_pb2.GenerateResponse] = []
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(cast(generation_pb2.GenerateResponse, chunk))
        assert chunks[-1].finish_reason == generation_pb2.FINISH_REASON_ABORT
        assert chunks[-1].usage.completion_tokens < 1500

        async def idle() -> bool:
            load = await stub.GetLoad(inference_pb2.GetLoadRequest())
            return load.running == 0 and load.tokens_in_flight == 0

        await eventually(idle)


async def test_cancel_frees_the_engine_and_watch_load_sees_it(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        watch = stub.WatchLoad(inference_pb2.WatchLoadRequest())
        assert (await read(watch)).running == 0
        call = stub.Generate(
            request(model=mesh.model, prompt="Go on", max_tokens=1500, ignore_eos=True)
        )
        await read(call)
        load = await read(watch)
        while load.running == 0:
            load = await read(watch)
        assert load.running == 1
        assert load.tokens_in_flight > 0
        call.cancel()
        while load.running != 0:
            load = await read(watch)
        assert load.tokens_in_flight == 0
        watch.cancel()
        # The load report comes from the engine core's scheduler, the request
        # table from vLLM's front end, which drops a cancelled request from a
        # task of its own: the two settle a moment apart.
        await eventually(lambda: mesh.engine.num_unfinished_requests() == 0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "hi", "n": 0}, "n"),
        ({"prompt": "hi", "n": 17}, "n"),
        ({"prompt": "hi", "logprobs": 21}, "logprobs"),
        ({"prompt": "hi", "min_p": 1.5}, "min_p"),
        ({"prompt": "hi", "repetition_penalty": 0.0}, "repetition_penalty"),
        ({"prompt": "hi", "presence_penalty": 3.0}, "presence_penalty"),
        ({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
        ({"prompt": "hi", "json_schema": "{not json"}, "json_schema"),
        ({"prompt": "hi", "regex": "(unclosed"}, "regex"),
        ({"prompt": "hi", "stop_token_ids": [99999]}, "stop_token_ids"),
        ({"prompt_token_ids": generation_pb2.TokenIds(ids=[5, 99999])}, "prompt_token_ids"),
        ({"prompt": "sea " * 5000}, "prompt"),
        ({"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
    ],
)
async def test_bad_requests_name_the_field(
    mesh: Mesh, fields: dict[str, object], field: str
) -> None:
    async with grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        call = inference_pb2_grpc.InferenceStub(ch).Generate(request(model=mesh.model, **fields))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [field]


async def test_concurrent_streams_over_grpc_all_complete(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)

        async def one(i: int) -> tuple[int, int]:
            chunks = [
                c
                async for c in stub.Generate(
                    request(model=mesh.model, prompt=f"s{i}", max_tokens=32, ignore_eos=True)
                )
            ]
            return sum(len(c.token_ids) for c in chunks), chunks[-1].usage.completion_tokens

        results = await asyncio.gather(*(one(i) for i in range(32)))
    assert results == [(32, 32)] * 32


async def test_requests_past_the_engine_batch_report_their_queueing(mesh: Mesh) -> None:
    """The engine batches 64; the 16 more that arrive with them wait for a
    slot, and their first chunk says how long (the router's limiter reads it)."""
    async with grpc.aio.insecure_channel(mesh.targets["inference"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)

        async def first_and_rest(i: int) -> tuple[float, list[float]]:
            chunks = [
                c
                async for c in stub.Generate(
                    request(model=mesh.model, prompt=f"q{i}", max_tokens=24, ignore_eos=True)
                )
            ]
            return chunks[0].queued_s, [c.queued_s for c in chunks[1:]]

        results = await asyncio.gather(*(first_and_rest(i) for i in range(80)))
    firsts = sorted(first for first, _ in results)
    assert all(q >= 0 for q in firsts)
    assert all(q > 0 for q in firsts[-16:])  # at least those past the batch waited
    assert all(rest == [0.0] * len(rest) for _, rest in results)  # first chunk only


async def test_a_paced_stream_batches_tokens_and_loses_none(mesh: Mesh) -> None:
    from observability import setup
    from observability.settings import TelemetrySettings
    from services.inference.server import serving
    from services.inference.settings import InferenceSettings

    telemetry = setup("inference-paced", TelemetrySettings())
    # 5 messages a second for one stream: 200 ms between messages.
    settings = InferenceSettings(
        model=mesh.model, port=0, stream_messages_per_s=5, grace_period_s=0
    )
    try:
        async with (
            serving(settings, telemetry, engine=mesh.engine) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
        ):
            stub = inference_pb2_grpc.InferenceStub(ch)
            chunks = [
                c
                async for c in stub.Generate(
                    request(model=mesh.model, prompt="pace", max_tokens=64, ignore_eos=True)
                )
            ]
    finally:
        telemetry.shutdown()
    tokens = sum(len(c.token_ids) for c in chunks)
    assert tokens == chunks[-1].usage.completion_tokens == 64
    # That the first message is never held back is tests/inference/test_pacing.py's
    # job: here the engine itself may already have merged the first few tokens.
    assert len(chunks) < tokens / 2


async def test_not_serving_until_the_engine_is_attached(mesh: Mesh) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from observability import setup
    from observability.settings import TelemetrySettings
    from services.inference.server import attach, create_server

    telemetry = setup("inference-loading", TelemetrySettings())
    server, servicer = await create_server("127.0.0.1:0", telemetry)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            check = health_pb2.HealthCheckRequest(service="maas.v1.Inference")
            assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = inference_pb2_grpc.InferenceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

            await attach(server, servicer, mesh.engine)
            assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING
            info_reply = await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
            assert info_reply.model.name == mesh.model
    finally:
        await server.stop(0)
        telemetry.shutdown()


# Guards against a hung test only: a fresh process loads the model in 20-40 s.
PROCESS_HANG_GUARD_S = 300.0


async def test_a_dead_engine_turns_the_service_not_serving_and_its_process_exits_non_zero(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "inference.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.inference",
            "--model", str(tiny_model_path), "--port", str(port),
            "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--enforce-eager",
            env={**os.environ, **cpu_engine_environment()},
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service="maas.v1.Inference"), wait_for_ready=True
            )

            async def next_status() -> int:
                update = await asyncio.wait_for(watch.read(), PROCESS_HANG_GUARD_S)
                assert update is not grpc.aio.EOF, log_path.read_text()[-3000:]
                return int(cast(health_pb2.HealthCheckResponse, update).status)

            while await next_status() != health_pb2.HealthCheckResponse.SERVING:
                pass
            [engine_core] = [
                child
                for child in psutil.Process(process.pid).children(recursive=True)
                if "EngineCore" in child.name()
            ]
            engine_core.send_signal(signal.SIGKILL)
            assert await next_status() == health_pb2.HealthCheckResponse.NOT_SERVING
        returncode = await asyncio.wait_for(process.wait(), PROCESS_HANG_GUARD_S)
        assert returncode == EXIT_ENGINE_FAILED, log_path.read_text()[-3000:]
        assert "the engine core process died" in log_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_make_runs_supervisor_starts_a_service_again_when_its_process_exits(
    tmp_path: Path,
) -> None:
    """What `make run` does when an inference process exits for a restart;
    a process that always fails stands in for it (json.tool on a missing file)."""
    from deploy.local.stack import Launch, start, stop_all, supervise

    spec = Launch("inference", "json.tool", 0, "maas.v1.Inference", ["/no/such/file"])
    services = [await start(spec, dict(os.environ), tmp_path)]
    first_pid = services[0].process.pid
    stop = asyncio.Event()
    supervisor = asyncio.create_task(
        supervise(services, dict(os.environ), tmp_path, stop, initial_s=0.05)
    )
    try:
        await eventually(lambda: services[0].restarts >= 2)
        assert services[0].process.pid != first_pid
    finally:
        stop.set()
        await supervisor
        await stop_all(services)
    assert all(s.process.returncode is not None for s in services)
