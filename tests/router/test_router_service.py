"""The router over real gRPC: two inference replicas (two servers over the
session's one engine), runtime registration, draining, shedding, deadlines,
retries and ejection. The one fake is a replica that always fails, which a
real one cannot be made to do on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from maas.v1 import (
    auth_pb2,
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.common.serving import ServiceServer, start_server
from services.inference.engine import Engine
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.router.dispatcher import FlowPolicy
from services.router.limiter import GradientLimiter
from services.router.replicas import EjectionPolicy, ReplicaSet
from services.router.server import routing
from services.router.settings import RouterSettings
from tests.support import eventually, free_port

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


@dataclass
class Replica:
    address: str
    spans: InMemorySpanExporter
    server: ServiceServer

    def generate_calls(self) -> int:
        return sum(
            1 for s in self.spans.get_finished_spans() if s.name == "/maas.v1.Inference/Generate"
        )


@dataclass
class Router:
    stub: router_pb2_grpc.RouterAsyncStub
    replicas: ReplicaSet
    model: str
    # host:port of its gRPC server.
    target: str


@asynccontextmanager
async def inference_replica(engine: Engine) -> AsyncIterator[Replica]:
    spans = InMemorySpanExporter()
    telemetry = setup("inference", TelemetrySettings(), span_exporter=spans)
    # One message per delta: these tests count tokens per message.
    settings = InferenceSettings(
        model=engine.model_info.name, port=0, stream_messages_per_s=0, grace_period_s=0.5
    )
    try:
        async with serving_inference(settings, telemetry, engine=engine) as running:
            yield Replica(f"127.0.0.1:{running.port}", spans, running.server)
    finally:
        telemetry.shutdown()


@asynccontextmanager
async def router(
    addresses: list[str],
    model: str,
    *,
    policy: FlowPolicy | None = None,
    limit: int = 32,
    ejection: EjectionPolicy | None = None,
) -> AsyncIterator[Router]:
    # Traced like the replicas: a hop that exports nothing records nothing and
    # tells the next hop not to either (observability/telemetry.py).
    telemetry = setup("router", TelemetrySettings(), span_exporter=InMemorySpanExporter())
    replicas = ReplicaSet(
        addresses,
        telemetry,
        retry_initial_s=0.05,
        ejection=ejection,
        limiter=lambda: GradientLimiter(initial=limit, max_limit=limit),
    )
    await replicas.start()
    try:
        async with (
            routing(RouterSettings(port=0, grace_period_s=0.5), telemetry, replicas, policy) as srv,
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch,
        ):
            yield Router(router_pb2_grpc.RouterStub(ch), replicas, model, f"127.0.0.1:{srv.port}")
    finally:
        await replicas.aclose()
        telemetry.shutdown()


def generate(
    model: str,
    prompt: str,
    *,
    max_tokens: int = 8,
    tenant: str = "t",
    priority: auth_pb2.Priority = auth_pb2.PRIORITY_DEFAULT,
) -> router_pb2.RouterGenerateRequest:
    return router_pb2.RouterGenerateRequest(
        request=generation_pb2.GenerateRequest(
            model=model, prompt=prompt, max_tokens=max_tokens, ignore_eos=True
        ),
        context=router_pb2.RequestContext(tenant_id=tenant, priority=priority),
    )


async def tokens_of(call: Any) -> int:
    chunks = [c async for c in call]
    return int(chunks[-1].usage.completion_tokens)


async def states(r: Router) -> dict[str, int]:
    listed = await r.stub.ListReplicas(router_pb2.ListReplicasRequest())
    return {x.address: x.state for x in listed.replicas}


async def serving(r: Router, n: int) -> None:
    async def check() -> bool:
        return list((await states(r)).values()).count(router_pb2.REPLICA_STATE_SERVING) == n

    await eventually(check)


async def two_replicas_behind_a_router(
    stack: AsyncExitStack, engine: Engine
) -> tuple[Replica, Replica, Router]:
    a = await stack.enter_async_context(inference_replica(engine))
    b = await stack.enter_async_context(inference_replica(engine))
    r = await stack.enter_async_context(router([a.address, b.address], engine.model_info.name))
    await serving(r, 2)
    return a, b, r


async def test_requests_spread_over_replicas_and_complete(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a, b, r = await two_replicas_behind_a_router(stack, vllm_engine)
        results = await asyncio.gather(
            *(tokens_of(r.stub.Generate(generate(model, f"{i} " * 50))) for i in range(24))
        )
        assert results == [8] * 24
        # Each replica's span ends just after its stream does.
        await eventually(lambda: a.generate_calls() + b.generate_calls() == 24)
        assert a.generate_calls() > 0 and b.generate_calls() > 0
        listed = await r.stub.ListReplicas(router_pb2.ListReplicasRequest())
        assert all(0 < x.concurrency_limit <= 32 and x.in_flight == 0 for x in listed.replicas)
        assert all(x.model.name == model for x in listed.replicas)


async def test_a_drained_replica_gets_no_new_work_and_comes_back(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a, b, r = await two_replicas_behind_a_router(stack, vllm_engine)
        drained = await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=a.address))
        assert drained.state == router_pb2.REPLICA_STATE_DRAINING
        before = a.generate_calls()
        await asyncio.gather(
            *(tokens_of(r.stub.Generate(generate(model, f"{i} " * 50))) for i in range(10))
        )
        assert a.generate_calls() == before
        await eventually(lambda: b.generate_calls() == 10)  # spans end just after the stream
        back = await r.stub.DrainReplica(
            router_pb2.DrainReplicaRequest(address=a.address, undrain=True)
        )
        assert back.state == router_pb2.REPLICA_STATE_SERVING


async def test_an_ejected_replica_gets_no_work_until_restored_and_the_last_one_stays(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a, b, r = await two_replicas_behind_a_router(stack, vllm_engine)
        ejected = await r.stub.EjectReplica(
            router_pb2.EjectReplicaRequest(address=a.address, duration_s=600, reason="errors")
        )
        assert ejected.state == router_pb2.REPLICA_STATE_EJECTED
        assert 590 < ejected.ejected_for_s <= 600
        # With `a` out, `b` is the model's last replica in rotation: it stays.
        with pytest.raises(grpc.aio.AioRpcError) as last:
            await r.stub.EjectReplica(
                router_pb2.EjectReplicaRequest(address=b.address, duration_s=60)
            )
        assert last.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for bad in (0.0, 86_401.0):
            with pytest.raises(grpc.aio.AioRpcError) as invalid:
                await r.stub.EjectReplica(
                    router_pb2.EjectReplicaRequest(address=a.address, duration_s=bad)
                )
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "duration_s" in (invalid.value.details() or "")

        before = a.generate_calls()
        await asyncio.gather(
            *(tokens_of(r.stub.Generate(generate(model, f"{i} " * 50))) for i in range(6))
        )
        assert a.generate_calls() == before

        restored = await r.stub.RestoreReplica(router_pb2.RestoreReplicaRequest(address=a.address))
        assert restored.state == router_pb2.REPLICA_STATE_SERVING
        assert restored.ejected_for_s == 0
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await r.stub.RestoreReplica(router_pb2.RestoreReplicaRequest(address="10.9.9.9:1"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_replicas_join_and_leave_at_run_time_without_losing_streams(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        b = await stack.enter_async_context(inference_replica(vllm_engine))
        r = await stack.enter_async_context(router([a.address], model))
        await serving(r, 1)
        # Steady load from four clients for the whole test: none may fail.
        stop = asyncio.Event()
        completed: list[int] = []

        async def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                completed.append(await tokens_of(r.stub.Generate(generate(model, f"{i}:{n}"))))
                n += 1

        clients = [asyncio.create_task(client(i)) for i in range(4)]
        joined = await r.stub.RegisterReplica(router_pb2.RegisterReplicaRequest(address=b.address))
        assert joined.address == b.address
        await serving(r, 2)

        # A long stream runs on a; a then leaves: the stream finishes whole.
        await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=b.address))
        long_call = r.stub.Generate(generate(model, "long", max_tokens=200))
        first = await long_call.read()
        assert isinstance(first, generation_pb2.GenerateResponse)

        async def rest_of_long_stream() -> int:
            last: object = first
            while (chunk := await long_call.read()) is not grpc.aio.EOF:
                last = chunk
            assert isinstance(last, generation_pb2.GenerateResponse)
            return int(last.usage.completion_tokens)

        long_stream = asyncio.create_task(rest_of_long_stream())
        await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=b.address, undrain=True))
        left = await r.stub.DeregisterReplica(
            router_pb2.DeregisterReplicaRequest(address=a.address)
        )
        assert left.draining_streams >= 1
        assert await tokens_of(r.stub.Generate(generate(model, "after"))) == 8
        assert await long_stream == 200
        await eventually(lambda: [x.address for x in r.replicas.replicas] == [b.address])
        stop.set()
        await asyncio.gather(*clients)  # raises if any request failed
        assert len(completed) > 4 and set(completed) == {8}

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=a.address))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await r.stub.RegisterReplica(router_pb2.RegisterReplicaRequest(address="nope"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_dead_replica_never_hangs_requests(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        dead = f"127.0.0.1:{free_port()}"
        r = await stack.enter_async_context(router([dead, a.address], model))
        await serving(r, 1)
        results = await asyncio.gather(
            *(tokens_of(r.stub.Generate(generate(model, f"{i}"), timeout=30)) for i in range(8))
        )
        assert results == [8] * 8
        assert (await states(r))[dead] == router_pb2.REPLICA_STATE_NOT_SERVING


class FakeFailingInference(inference_pb2_grpc.InferenceServicer):
    """A replica that says it serves the model and fails every generation
    before the first token with `code`; with `code` None (recovered) it
    answers each with one token."""

    def __init__(
        self, model: str, code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        self._model = model
        self.code = code
        self.calls = 0

    async def GetModelInfo(
        self, request: inference_pb2.GetModelInfoRequest, context: Any
    ) -> inference_pb2.ReplicaInfo:
        return inference_pb2.ReplicaInfo(
            model=generation_pb2.ModelInfo(name=self._model, max_context_length=2048),
            max_num_seqs=64,
        )

    async def Embed(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fake replica: generation only")

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        if self.code is not None:
            await context.abort(self.code, "fake replica failure")
        yield generation_pb2.GenerateResponse(
            text="ok",
            token_ids=[1],
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            usage=generation_pb2.Usage(prompt_tokens=1, completion_tokens=1),
        )

    async def WatchLoad(self, request: Any, context: Any) -> AsyncIterator[inference_pb2.Load]:
        yield inference_pb2.Load()
        await asyncio.Event().wait()

    async def GetLoad(self, request: Any, context: Any) -> inference_pb2.Load:
        return inference_pb2.Load()

    async def CountTokens(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "fake replica failure")

    async def Abort(self, request: Any, context: Any) -> inference_pb2.AbortResponse:
        return inference_pb2.AbortResponse()


@asynccontextmanager
async def fake_failing_replica(
    model: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> AsyncIterator[tuple[str, FakeFailingInference]]:
    telemetry: Telemetry = setup("fake-inference", TelemetrySettings())
    fake = FakeFailingInference(model, code)

    def registrar(s: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServicer_to_server(fake, s)

    server: ServiceServer = await start_server(
        address="127.0.0.1:0",
        telemetry=telemetry,
        service_names=[INFERENCE],
        registrars=[registrar],
    )
    try:
        yield f"127.0.0.1:{server.port}", fake
    finally:
        await server.stop(0)
        telemetry.shutdown()


async def test_failures_before_the_first_token_retry_elsewhere_and_eject_the_replica(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        bad_address, fake = await stack.enter_async_context(fake_failing_replica(model))
        r = await stack.enter_async_context(
            router(
                [bad_address, a.address],
                model,
                ejection=EjectionPolicy(failures=3, base_s=60.0, max_s=60.0),
            )
        )
        await serving(r, 2)
        # Every request completes: the ones sent to the fake are retried on a.
        for i in range(60):
            assert await tokens_of(r.stub.Generate(generate(model, f"{i} " * 40))) == 8
            if fake.calls == 3:
                break
        assert (await states(r))[bad_address] == router_pb2.REPLICA_STATE_EJECTED
        # Ejected after its third failure in a row, it gets nothing more.
        for i in range(10):
            assert await tokens_of(r.stub.Generate(generate(model, f"more {i} " * 40))) == 8
        assert fake.calls == 3
        assert (await states(r))[bad_address] == router_pb2.REPLICA_STATE_EJECTED


async def test_failures_a_caller_causes_never_count_against_the_replica(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        # One failure that counted would eject it (were it not the last one)
        # or hold it to one request at a time.
        r = await stack.enter_async_context(
            router([a.address], model, ejection=EjectionPolicy(failures=1, base_s=60.0))
        )
        await serving(r, 1)
        for i in range(3):
            # Its own deadline, passing mid-stream.
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await tokens_of(
                    r.stub.Generate(generate(model, f"late {i}", max_tokens=2000), timeout=0.5)
                )
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Its cancel, right after the first token.
            call = r.stub.Generate(generate(model, f"gone {i}", max_tokens=2000))
            async for _ in call:
                break
            call.cancel()
            # Its bad input, which only the engine can judge.
            bad = generate(model, f"bad {i}")
            bad.request.stop_token_ids.append(99_999)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await tokens_of(r.stub.Generate(bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await eventually(lambda: r.replicas.get(a.address).limiter.in_flight == 0)
        [listed] = (await r.stub.ListReplicas(router_pb2.ListReplicasRequest())).replicas
        assert listed.state == router_pb2.REPLICA_STATE_SERVING
        assert listed.concurrency_limit == 32
        assert await tokens_of(r.stub.Generate(generate(model, "still here"))) == 8


async def test_an_internal_error_is_the_requests_and_neither_retried_nor_counted(
    vllm_engine: Engine,
) -> None:
    """INTERNAL can be provoked by what a caller sends (an engine failing on
    it): it goes back to that caller, and no replica pays for it."""
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        bad_address, fake = await stack.enter_async_context(
            fake_failing_replica(model, grpc.StatusCode.INTERNAL)
        )
        r = await stack.enter_async_context(
            router(
                [bad_address, a.address],
                model,
                ejection=EjectionPolicy(failures=1, base_s=60.0, max_s=60.0),
            )
        )
        await serving(r, 2)
        await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=a.address))
        for i in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await tokens_of(r.stub.Generate(generate(model, f"{i}")))
            assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert fake.calls == 3  # each tried once, not again elsewhere
        assert a.generate_calls() == 0
        assert (await states(r))[bad_address] == router_pb2.REPLICA_STATE_SERVING


async def test_the_last_replica_of_a_model_is_probed_not_ejected_until_it_recovers() -> None:
    async with AsyncExitStack() as stack:
        address, fake = await stack.enter_async_context(fake_failing_replica("m"))
        r = await stack.enter_async_context(
            router([address], "m", ejection=EjectionPolicy(failures=2, base_s=60.0, max_s=60.0))
        )
        await serving(r, 1)
        for i in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await tokens_of(r.stub.Generate(generate("m", f"{i}")))
            # The replica's failure, not "no replica of the model": it is still tried.
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no replica could serve" in (failed.value.details() or "")
        [listed] = (await r.stub.ListReplicas(router_pb2.ListReplicasRequest())).replicas
        assert listed.state == router_pb2.REPLICA_STATE_SERVING
        assert listed.probing
        assert listed.concurrency_limit == 1
        assert listed.consecutive_failures == 6  # two attempts a request
        fake.code = None
        assert await tokens_of(r.stub.Generate(generate("m", "back"))) == 1
        [listed] = (await r.stub.ListReplicas(router_pb2.ListReplicasRequest())).replicas
        assert listed.state == router_pb2.REPLICA_STATE_SERVING
        assert not listed.probing
        assert listed.concurrency_limit == 32
        assert listed.consecutive_failures == 0


async def test_a_full_queue_sheds_with_retry_info(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        r = await stack.enter_async_context(
            router([a.address], model, limit=1, policy=FlowPolicy(max_queue=1))
        )
        await serving(r, 1)
        running = asyncio.create_task(
            tokens_of(r.stub.Generate(generate(model, "1", max_tokens=300)))
        )
        await eventually(lambda: r.replicas.get(a.address).limiter.in_flight == 1)
        queued = asyncio.create_task(tokens_of(r.stub.Generate(generate(model, "2"))))
        await eventually(lambda: queue_stats(r, lambda q: q.waiting == 1))
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await tokens_of(r.stub.Generate(generate(model, "3")))
        assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(shed.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0
        stats = await r.stub.GetQueueStats(router_pb2.GetQueueStatsRequest())
        assert stats.waiting == 1
        assert dict(stats.shed) == {"queue_full": 1}
        assert [(d.tenant_id, d.waiting) for d in stats.depths] == [("t", 1)]
        assert await running == 300
        assert await queued == 8


async def queue_stats(r: Router, check: Callable[[router_pb2.QueueStats], bool]) -> bool:
    return check(await r.stub.GetQueueStats(router_pb2.GetQueueStatsRequest()))


async def test_a_deadline_that_cannot_be_met_is_shed_from_the_queue(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        r = await stack.enter_async_context(router([a.address], model, limit=1))
        await serving(r, 1)
        # Long enough to hold the only slot well past the other's deadline even
        # when the check below runs late on a loaded machine.
        running = asyncio.create_task(
            tokens_of(r.stub.Generate(generate(model, "1", max_tokens=1500)))
        )
        await eventually(lambda: r.replicas.get(a.address).limiter.in_flight == 1)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await tokens_of(r.stub.Generate(generate(model, "2"), timeout=0.5))
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: queue_stats(r, lambda q: q.shed["deadline"] == 1))
        assert a.generate_calls() == 0  # the shed request never reached the replica
        assert await running == 1500


async def test_cancelling_at_the_router_frees_the_engine(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        r = await stack.enter_async_context(router([a.address], model))
        await serving(r, 1)
        call = r.stub.Generate(generate(model, "cancel me", max_tokens=2000))
        async for _ in call:
            break
        call.cancel()
        async with grpc.aio.insecure_channel(a.address) as ch:
            replica = inference_pb2_grpc.InferenceStub(ch)

            async def idle() -> bool:
                load = await replica.GetLoad(inference_pb2.GetLoadRequest())
                return load.running == 0 and load.tokens_in_flight == 0

            await eventually(idle)
        await eventually(lambda: r.replicas.get(a.address).limiter.in_flight == 0)


async def test_a_replica_killed_mid_stream_fails_its_streams_cleanly_and_work_moves_on(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a, b, r = await two_replicas_behind_a_router(stack, vllm_engine)
        await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=b.address))
        call = r.stub.Generate(generate(model, "doomed", max_tokens=2000))
        async for _ in call:
            break  # the stream runs on a
        await r.stub.DrainReplica(router_pb2.DrainReplicaRequest(address=b.address, undrain=True))
        await a.server.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            async for _ in call:
                pass
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        results = await asyncio.gather(
            *(tokens_of(r.stub.Generate(generate(model, f"after {i}"))) for i in range(6))
        )
        assert results == [8] * 6


async def test_the_replica_is_told_which_request_runs_first(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        r = await stack.enter_async_context(router([a.address], model))
        await serving(r, 1)
        for tenant, priority in [
            ("i", auth_pb2.PRIORITY_INTERACTIVE),
            ("b", auth_pb2.PRIORITY_BATCH),
        ]:
            await tokens_of(
                r.stub.Generate(generate(model, "hi", tenant=tenant, priority=priority))
            )
        await eventually(lambda: a.generate_calls() == 2)
        told = [
            int(str(s.attributes["maas.inference.priority"]))
            for s in a.spans.get_finished_spans()
            if s.name == "/maas.v1.Inference/Generate" and s.attributes
        ]
        assert len(told) == 2 and told[0] < told[1]


async def test_higher_priority_waiting_work_goes_first(vllm_engine: Engine) -> None:
    model = vllm_engine.model_info.name
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(inference_replica(vllm_engine))
        r = await stack.enter_async_context(router([a.address], model, limit=1))
        await serving(r, 1)
        finished: list[str] = []

        async def run(name: str, priority: auth_pb2.Priority, tokens: int) -> None:
            request = generate(model, name, max_tokens=tokens, tenant=name, priority=priority)
            await tokens_of(r.stub.Generate(request))
            finished.append(name)

        # Long enough that the replica is still busy when both others have
        # queued, on a machine starved by other work (300 once ran out first).
        first = asyncio.create_task(run("first", auth_pb2.PRIORITY_DEFAULT, 1500))
        await eventually(lambda: r.replicas.get(a.address).limiter.in_flight == 1)
        batch = asyncio.create_task(run("batch", auth_pb2.PRIORITY_BATCH, 8))
        await eventually(lambda: queue_stats(r, lambda q: q.waiting == 1))
        interactive = asyncio.create_task(run("interactive", auth_pb2.PRIORITY_INTERACTIVE, 8))
        await eventually(lambda: queue_stats(r, lambda q: q.waiting == 2))
        await asyncio.gather(first, batch, interactive)
        assert finished == ["first", "interactive", "batch"]
