"""A wedged engine (requests unfinished, no step for `stall_s`) turns the
replica NOT_SERVING and the router stops sending to it. A real engine
cannot wedge on demand: FakeWedgedEngine stands in for one (a dead real
engine is tests/e2e/test_inference_service.py's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import auth_pb2, generation_pb2, router_pb2, router_pb2_grpc
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.inference.engine import (
    Capacity,
    Delta,
    GenerationInput,
    LoadSnapshot,
    ModelInfo,
    SamplingOptions,
)
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.inference.watchdog import StallDetector, wait_engine_failure
from services.router.server import serving as serving_router
from services.router.settings import RouterSettings
from tests.support import eventually

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


class FakeWedgedEngine:
    """An engine that takes requests and never steps again once `wedged`."""

    def __init__(self) -> None:
        self.unfinished = 0
        self.stepped_at = 0.0
        self.wedged = True

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(name="fake", max_context_length=2048, vocab_size=4096)

    @property
    def capacity(self) -> Capacity:
        return Capacity(max_num_seqs=8, kv_cache_tokens=1024)

    @property
    def adapters(self) -> tuple[str, ...]:
        return ()

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        return None

    async def unload_adapter(self, adapter_id: str) -> None:
        return None

    async def generate(
        self,
        request_id: str,
        inp: GenerationInput,
        options: SamplingOptions,
        adapter: str | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[Delta, None]:
        self.unfinished += 1
        try:
            await asyncio.Event().wait()  # no output, ever
            yield Delta("", (), 1, 0, None)  # pragma: no cover - never reached
        finally:
            self.unfinished -= 1

    async def abort(self, request_ids: Sequence[str]) -> list[str]:
        return []

    async def watch_load(self) -> AsyncGenerator[LoadSnapshot, None]:
        yield self.load()
        await asyncio.Event().wait()

    async def count_tokens(self, inp: GenerationInput) -> int:
        return 1

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(running=self.unfinished, waiting=0, kv_cache_usage=0.0)

    def num_unfinished_requests(self) -> int:
        return self.unfinished

    async def check_health(self) -> None:
        pass

    async def wait_dead(self) -> str:
        await asyncio.Event().wait()  # it is wedged, not dead
        raise AssertionError("unreachable")

    def last_step_at(self) -> float:
        return self.stepped_at


def test_an_engine_busy_without_a_step_for_stall_s_is_wedged() -> None:
    engine = FakeWedgedEngine()
    now = [1000.0]
    detector = StallDetector(engine, stall_s=10.0, clock=lambda: now[0])
    # Idle for a long time since its last step: not wedged.
    assert detector.check() is None
    engine.unfinished = 2
    assert detector.check() is None  # busy from now on
    now[0] += 9.0
    assert detector.check() is None
    now[0] += 1.0
    reason = detector.check()
    assert reason is not None and "2 requests unfinished" in reason


def test_an_engine_that_keeps_stepping_is_not_wedged() -> None:
    engine = FakeWedgedEngine()
    now = [1000.0]
    detector = StallDetector(engine, stall_s=10.0, clock=lambda: now[0])
    engine.unfinished = 1
    for _ in range(10):
        now[0] += 6.0
        engine.stepped_at = now[0] - 5.0  # a slow step, but a step
        assert detector.check() is None
    # Done, then busy again after a pause longer than stall_s: time counts afresh.
    engine.unfinished = 0
    assert detector.check() is None
    now[0] += 60.0
    engine.unfinished = 1
    assert detector.check() is None
    now[0] += 9.0
    assert detector.check() is None


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("inference-wedged", TelemetrySettings())
    yield tel
    tel.shutdown()


async def test_a_wedged_engine_turns_the_replica_not_serving_and_the_router_drops_it(
    telemetry: Telemetry,
) -> None:
    engine = FakeWedgedEngine()
    async with (
        serving_inference(
            InferenceSettings(model="fake", port=0, engine_stall_s=0.2, grace_period_s=0),
            telemetry,
            engine=engine,
        ) as inference,
        serving_router(
            RouterSettings(
                port=0,
                replicas=[f"127.0.0.1:{inference.port}"],
                health_retry_initial_s=0.05,
                grace_period_s=0.5,
            ),
            telemetry,
        ) as router,
        grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as router_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as replica_channel,
    ):
        await router.wait_ready(timeout_s=30)
        health = health_pb2_grpc.HealthStub(replica_channel)
        check = health_pb2.HealthCheckRequest(service="maas.v1.Inference")
        assert (await health.Check(check)).status == SERVING
        stub = router_pb2_grpc.RouterStub(router_channel)
        stuck = stub.Generate(
            router_pb2.RouterGenerateRequest(
                request=generation_pb2.GenerateRequest(model="fake", prompt="hi"),
                context=router_pb2.RequestContext(
                    tenant_id="t", priority=auth_pb2.PRIORITY_DEFAULT
                ),
            )
        )
        reason = await inference.failed
        assert reason.startswith("wedged")
        # Readiness and liveness both: a supervisor's probe restarts it.
        assert (await health.Check(check)).status == NOT_SERVING
        liveness = health_pb2.HealthCheckRequest(service="")
        assert (await health.Check(liveness)).status == NOT_SERVING

        async def dropped() -> bool:
            listed = await stub.ListReplicas(router_pb2.ListReplicasRequest())
            return [r.state for r in listed.replicas] == [router_pb2.REPLICA_STATE_NOT_SERVING]

        await eventually(dropped)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CountTokens(generation_pb2.CountTokensRequest(model="fake", prompt="x"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        stuck.cancel()


async def test_a_dead_engine_is_noticed_on_its_own_signal() -> None:
    class FakeDyingEngine(FakeWedgedEngine):
        def __init__(self) -> None:
            super().__init__()
            self.died = asyncio.Event()

        async def wait_dead(self) -> str:
            await self.died.wait()
            return "the engine core process died"

    engine = FakeDyingEngine()
    # A stall far away: only the death can end the wait.
    failure = asyncio.create_task(wait_engine_failure(engine, stall_s=3600.0))
    await asyncio.sleep(0)
    assert not failure.done()
    engine.died.set()
    assert await failure == "the engine core process died"
