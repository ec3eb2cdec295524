"""A replica's private adapter slots over the simulated engine: least
recently used eviction, one fetch and one load for concurrent misses,
UNAVAILABLE while every slot is busy, release however a request ends, and
the same over the inference service's real gRPC server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.common.errors import FailedPreconditionError, NotFoundError, UnavailableError
from services.inference.adapter_slots import AdapterSlots, FetchedAdapter
from services.inference.load_report import replica_load, watch_replica_load
from services.inference.server import RunningInference, serving
from services.inference.settings import InferenceSettings
from services.inference.sim_engine import SimEngine, SimLimits
from services.inference.sim_profiles import TINY_CPU
from tests.support import eventually

MODEL = "sim-tiny"
# The CPU profile's shapes with steps about 20x shorter: tests wait little.
FAST = replace(
    TINY_CPU,
    name="fast-test",
    step_base_s=0.2e-3,
    step_per_seq_s=0.005e-3,
    step_per_prefill_token_s=0.001e-3,
)


class LocalAdapters:
    """Adapters kept in local directories, fetched by id (the registry's
    role), counting fetches; `gate` (when set) holds every fetch until opened."""

    def __init__(self, root: Path, adapters: dict[str, str]) -> None:
        self._root = root
        self._base = adapters  # id -> base model
        self.fetches: Counter[str] = Counter()
        self.discarded: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, adapter_id: str) -> FetchedAdapter:
        self.fetches[adapter_id] += 1
        if self.gate is not None:
            await self.gate.wait()
        base = self._base.get(adapter_id)
        if base is None:
            raise NotFoundError(f"adapter {adapter_id!r} not found")
        path = self._root / adapter_id
        path.mkdir(exist_ok=True)
        return FetchedAdapter(path, base, discard=lambda: self.discarded.append(adapter_id))


def ids(*names: str) -> dict[str, str]:
    return {f"ad-{name * 24}": MODEL for name in names}


A, B, C = (f"ad-{c * 24}" for c in "abc")
OTHER = "ad-" + "f" * 24


@asynccontextmanager
async def sim_slots(
    tmp_path: Path, slots: int, load_s: float = 0.0
) -> AsyncIterator[tuple[SimEngine, AdapterSlots, LocalAdapters]]:
    fetch = LocalAdapters(tmp_path, {**ids("a", "b", "c"), OTHER: "another-model"})
    async with SimEngine(
        FAST, name=MODEL, limits=SimLimits.of(FAST), adapter_load_s=load_s
    ) as engine:
        slots_ = AdapterSlots(slots, engine, fetch, base_model=MODEL)
        yield engine, slots_, fetch
        await slots_.aclose()


async def test_a_miss_evicts_the_least_recently_used_idle_adapter(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=2) as (engine, slots, fetch):
        for adapter in (A, B, A):  # A used last: B is the least recently used
            async with slots.use(adapter):
                pass
        assert slots.loaded == (A, B)
        async with slots.use(C):
            assert slots.loaded == (C, A)
            # The engine holds what the slots say; the load report reads the slots.
            assert engine.private_adapters == {C, A}
            assert replica_load(engine, slots).loaded_adapters == (C, A)
        assert slots.loads == engine.adapter_loads == replica_load(engine, slots).adapter_loads == 3
        assert fetch.fetches == Counter({A: 1, B: 1, C: 1})
        assert fetch.discarded == [B]  # the evicted adapter's files go


async def test_load_reports_follow_the_slots(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=2) as (engine, slots, _fetch):
        seen: list[tuple[tuple[str, ...], int]] = []

        async def watch() -> None:
            async with aclosing(watch_replica_load(engine, slots)) as loads:
                async for load in loads:
                    seen.append((load.loaded_adapters, load.adapter_loads))

        watcher = asyncio.create_task(watch())
        try:
            await eventually(lambda: bool(seen))
            assert seen[0] == ((), 0)
            # A load, another, a hit that reorders, then a miss that evicts B.
            for adapter, report in (
                (A, ((A,), 1)),
                (B, ((B, A), 2)),
                (A, ((A, B), 2)),
                (C, ((C, A), 3)),
            ):
                async with slots.use(adapter):
                    await eventually(lambda report=report: bool(seen) and seen[-1] == report)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert len(seen) == len(set(seen)), "a report only when something changed"


async def test_concurrent_misses_share_one_fetch_and_one_load(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=1, load_s=0.01) as (engine, slots, fetch):
        fetch.gate = asyncio.Event()
        waiting = [asyncio.create_task(slots.acquire(A)) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert slots.users(A) == 5 and not slots.loaded
        fetch.gate.set()
        await asyncio.gather(*waiting)
        assert fetch.fetches[A] == 1 and engine.adapter_loads == slots.loads == 1
        for _ in waiting:
            slots.release(A)
        assert slots.users(A) == 0


async def test_busy_slots_refuse_a_miss_until_released(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=1) as (_, slots, _fetch):
        await slots.acquire(A)
        with pytest.raises(UnavailableError):
            await slots.acquire(B)
        assert slots.loaded == (A,)  # the refused miss changed nothing
        slots.release(A)
        async with slots.use(B):
            assert slots.loaded == (B,)


async def test_a_slot_being_loaded_counts_as_busy(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=1) as (_, slots, fetch):
        fetch.gate = asyncio.Event()
        loading = asyncio.create_task(slots.acquire(A))
        await asyncio.sleep(0)
        with pytest.raises(UnavailableError):
            await slots.acquire(B)
        fetch.gate.set()
        await loading
        slots.release(A)


async def test_a_cancelled_waiter_releases_and_the_load_goes_on(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=1) as (engine, slots, fetch):
        fetch.gate = asyncio.Event()
        waiter = asyncio.create_task(slots.acquire(A))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.users(A) == 0
        fetch.gate.set()
        async with slots.use(A):  # joins the load still running, or hits
            pass
        assert fetch.fetches[A] == 1 and engine.adapter_loads == slots.loads == 1


async def test_unknown_and_foreign_adapters_fail_and_free_their_slot(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=1) as (_, slots, _fetch):
        with pytest.raises(NotFoundError):
            await slots.acquire("ad-" + "0" * 24)
        with pytest.raises(FailedPreconditionError):
            await slots.acquire(OTHER)
        assert slots.loaded == () and slots.loads == 0
        async with slots.use(A):
            assert A in slots.loaded


async def test_no_slots_serve_no_private_adapters(tmp_path: Path) -> None:
    async with sim_slots(tmp_path, slots=0) as (_, slots, _fetch):
        with pytest.raises(FailedPreconditionError):
            await slots.acquire(A)


# Over the service's gRPC server.


@asynccontextmanager
async def sim_replica(tmp_path: Path, slots: int) -> AsyncIterator[RunningInference]:
    telemetry = setup("inference", TelemetrySettings())
    settings = InferenceSettings(
        engine="sim",
        sim_profile="tiny-cpu",
        model=MODEL,
        port=0,
        stream_messages_per_s=0,
        grace_period_s=0,
        adapter_slots=slots,
        # Never dialled: the adapters come from the fetch given to serving.
        registry_address="127.0.0.1:1",
        sim_adapter_load_s=0.0,
    )
    fetch = LocalAdapters(tmp_path, {**ids("a", "b"), OTHER: "another-model"})
    try:
        async with serving(settings, telemetry, adapter_fetch=fetch) as running:
            yield running
    finally:
        telemetry.shutdown()


def generate(adapter_id: str, max_tokens: int = 8) -> inference_pb2.InferenceGenerateRequest:
    return inference_pb2.InferenceGenerateRequest(
        request=generation_pb2.GenerateRequest(
            model=MODEL, prompt="hello there", max_tokens=max_tokens, ignore_eos=True
        ),
        adapter_id=adapter_id,
    )


async def tokens(stub: inference_pb2_grpc.InferenceAsyncStub, adapter_id: str) -> list[int]:
    return [t async for chunk in stub.Generate(generate(adapter_id)) for t in chunk.token_ids]


async def test_the_service_generates_with_a_private_adapter(tmp_path: Path) -> None:
    async with (
        sim_replica(tmp_path, slots=1) as replica,
        grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch,
    ):
        stub = inference_pb2_grpc.InferenceStub(ch)
        info = await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
        assert info.adapter_slots == 1
        base, with_a, with_b = [await tokens(stub, a) for a in ("", A, B)]
        assert len({tuple(base), tuple(with_a), tuple(with_b)}) == 3
        assert await tokens(stub, A) == with_a  # reloaded after B evicted it: the same
        load = await stub.GetLoad(inference_pb2.GetLoadRequest())
        assert list(load.loaded_adapters) == [A] and load.adapter_loads == 3

        for adapter_id, code in (
            ("ad-" + "0" * 24, grpc.StatusCode.NOT_FOUND),
            (OTHER, grpc.StatusCode.FAILED_PRECONDITION),
            # Named in the cache directory's path: no traversal, a bounded length.
            ("../../outside", grpc.StatusCode.INVALID_ARGUMENT),
            ("x" * 129, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await tokens(stub, adapter_id)
            assert err.value.code() == code


async def test_busy_slots_are_unavailable_until_the_stream_is_cancelled(tmp_path: Path) -> None:
    async with (
        sim_replica(tmp_path, slots=1) as replica,
        grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch,
    ):
        stub = inference_pb2_grpc.InferenceStub(ch)
        # Long enough to still run when B asks (the tiny-cpu profile takes ms a step).
        holding = stub.Generate(generate(A, max_tokens=2000))
        await holding.read()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tokens(stub, B)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        holding.cancel()
        # The cancelled stream released A; B now evicts it.
        while True:
            try:
                await tokens(stub, B)
                break
            except grpc.aio.AioRpcError as retry:
                # The server sees the cancel a moment after the client.
                assert retry.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.01)
        load = await stub.GetLoad(inference_pb2.GetLoadRequest())
        assert list(load.loaded_adapters) == [B]


async def test_a_replica_without_slots_refuses_private_adapters(tmp_path: Path) -> None:
    async with (
        sim_replica(tmp_path, slots=0) as replica,
        grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch,
    ):
        stub = inference_pb2_grpc.InferenceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tokens(stub, A)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
