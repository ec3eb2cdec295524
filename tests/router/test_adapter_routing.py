"""Adapter-aware replica choice: the choice alone over replica state, then a
real router over two simulated replicas with one adapter slot each (real
gRPC): a burst for one adapter sticks to one replica, another adapter goes
to the other, a replica full of adapters in use passes the request on
without a mark against its health, and with affinity off adapters are
ignored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest

from maas.v1 import (
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from observability import setup
from observability.settings import TelemetrySettings
from services.inference.adapter_slots import FetchedAdapter
from services.inference.server import RunningInference
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.router.choice import choose_for_adapter
from services.router.dispatcher import FlowPolicy
from services.router.limiter import GradientLimiter
from services.router.replica import Replica, ReplicaLoad
from services.router.replicas import ReplicaSet
from services.router.server import routing
from services.router.settings import RouterSettings
from tests.support import eventually

A, B, C = (f"ad-{c * 24}" for c in "abc")
MODEL = "sim-tiny"


def replicas(n: int, slots: int = 1) -> list[Replica]:
    out = []
    for i in range(n):
        r = Replica(f"10.0.0.{i}:50054", limiter=GradientLimiter(initial=4, max_limit=4))
        r.serving = True
        r.adapter_slots = slots
        out.append(r)
    return out


def test_a_replica_holding_the_adapter_wins_over_a_less_loaded_one() -> None:
    one, two = replicas(2)
    one.load = ReplicaLoad(loaded_adapters=(A,))
    one.limiter.acquire()
    assert choose_for_adapter([one, two], A) is one
    # Unless it has no room left.
    for _ in range(3):
        one.limiter.acquire()
    assert choose_for_adapter([one, two], A) is two


def test_what_the_router_runs_there_counts_before_a_report() -> None:
    one, two = replicas(2)
    one.adapter_started(A)  # loading there: no report says so yet
    assert choose_for_adapter([one, two], A) is one
    # B goes where a slot is free.
    assert choose_for_adapter([one, two], B) is two
    one.adapter_ended(A, now=0.0)
    one.load = ReplicaLoad(loaded_adapters=(A,))  # the report of its load
    two.limiter.acquire()
    assert choose_for_adapter([one, two], A) is one
    # Evicted (another caller's adapter), as a later report says: no preference.
    one.load = ReplicaLoad(loaded_adapters=(C,))
    one.limiter.acquire()
    two.limiter.release()
    assert choose_for_adapter([one, two], A) is two
    assert not one.holds(A)


def test_when_every_slot_is_taken_an_idle_adapter_is_evicted_first() -> None:
    one, two = replicas(2)
    one.load = ReplicaLoad(loaded_adapters=(A,))
    two.load = ReplicaLoad(loaded_adapters=(B,))
    # A has requests running on `one`; B none on `two`, though `two` is busier.
    one.adapter_started(A)
    one.limiter.acquire()
    for _ in range(2):
        two.limiter.acquire()
    assert choose_for_adapter([one, two], C) is two


def test_an_adapter_used_lately_is_held_until_it_has_been_idle_a_while() -> None:
    one, two = replicas(2)
    one.adapter_started(A)
    one.load = ReplicaLoad(loaded_adapters=(A,))
    one.adapter_ended(A, now=10.0)
    two.adapter_started(B)  # running: never evicted
    assert choose_for_adapter([one, two], C, now=10.1, min_idle_s=0.3) is None
    assert choose_for_adapter([one, two], C, now=10.4, min_idle_s=0.3) is one


def test_none_while_every_slot_runs_other_adapters() -> None:
    one, two = replicas(2)
    one.adapter_started(A)
    two.adapter_started(B)
    assert choose_for_adapter([one, two], C) is None
    two.adapter_ended(B, now=0.0)
    assert choose_for_adapter([one, two], C) is two


def test_replicas_without_slots_only_when_none_has_any() -> None:
    plain, slotted = replicas(2)
    plain.adapter_slots = 0
    slotted.limiter.acquire()
    assert choose_for_adapter([plain, slotted], A) is slotted
    for _ in range(3):
        slotted.limiter.acquire()
    # The slotted one is full: the request waits for it.
    assert choose_for_adapter([plain, slotted], A) is None
    slotted.adapter_slots = 0
    assert choose_for_adapter([plain, slotted], A) is plain


def test_excluded_replicas_are_left_out_while_another_is_left() -> None:
    one, two = replicas(2)
    one.load = ReplicaLoad(loaded_adapters=(A,))
    assert choose_for_adapter([one, two], A, exclude=frozenset({one.address})) is two


# A real router over two simulated replicas.


async def fetch(adapter_id: str) -> FetchedAdapter:
    # The simulated engine reads no files: any directory will do.
    return FetchedAdapter(Path("."), MODEL)


@asynccontextmanager
async def sim_replica(load_s: float = 0.0) -> AsyncIterator[RunningInference]:
    telemetry = setup("inference", TelemetrySettings())
    settings = InferenceSettings(
        engine="sim",
        sim_profile="tiny-cpu",
        model=MODEL,
        port=0,
        stream_messages_per_s=0,
        grace_period_s=0,
        adapter_slots=1,
        # Never dialled: the adapters come from the fetch given to serving.
        registry_address="127.0.0.1:1",
        sim_adapter_load_s=load_s,
    )
    try:
        async with serving_inference(settings, telemetry, adapter_fetch=fetch) as running:
            yield running
    finally:
        telemetry.shutdown()


@asynccontextmanager
async def mesh(
    *, adapter_affinity: bool = True, replicas_out: list[str] | None = None
) -> AsyncIterator[router_pb2_grpc.RouterAsyncStub]:
    """A router over two simulated replicas; their addresses go to `replicas_out`."""
    async with AsyncExitStack() as stack:
        # A load as long as a GPU's, so a burst arrives before any report.
        one = await stack.enter_async_context(sim_replica(load_s=0.1))
        two = await stack.enter_async_context(sim_replica(load_s=0.1))
        telemetry = setup("router", TelemetrySettings())
        stack.callback(telemetry.shutdown)
        replica_set = ReplicaSet(
            [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"], telemetry, retry_initial_s=0.05
        )
        await replica_set.start()
        stack.push_async_callback(replica_set.aclose)
        policy = FlowPolicy(
            choice="affinity" if adapter_affinity else "round_robin",
            adapter_affinity=adapter_affinity,
        )
        settings = RouterSettings(port=0, grace_period_s=0)
        srv = await stack.enter_async_context(routing(settings, telemetry, replica_set, policy))
        ch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}"))
        stub = router_pb2_grpc.RouterStub(ch)

        async def both_up() -> bool:
            listed = await stub.ListReplicas(router_pb2.ListReplicasRequest())
            return [r.adapter_slots for r in listed.replicas if r.model.name] == [1, 1]

        await eventually(both_up)
        if replicas_out is not None:
            replicas_out += [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"]
        yield stub


def generate(
    adapter_id: str, max_tokens: int = 8, prompt: str = "hi"
) -> router_pb2.RouterGenerateRequest:
    return router_pb2.RouterGenerateRequest(
        request=generation_pb2.GenerateRequest(
            model=MODEL, prompt=prompt, max_tokens=max_tokens, ignore_eos=True
        ),
        context=router_pb2.RequestContext(tenant_id="t"),
        adapter_id=adapter_id,
    )


async def run(stub: router_pb2_grpc.RouterAsyncStub, adapter_id: str, i: int = 0) -> int:
    chunks = [c async for c in stub.Generate(generate(adapter_id, prompt=f"hello {i}"))]
    return int(chunks[-1].usage.completion_tokens)


async def listed(stub: router_pb2_grpc.RouterAsyncStub) -> list[router_pb2.Replica]:
    return list((await stub.ListReplicas(router_pb2.ListReplicasRequest())).replicas)


async def total_loads(stub: router_pb2_grpc.RouterAsyncStub) -> int:
    return sum(r.load.adapter_loads for r in await listed(stub))


async def test_a_burst_for_one_adapter_sticks_to_one_replica_and_another_goes_elsewhere() -> None:
    async with mesh() as stub:
        # Sent together: none has been reported loaded yet when they are placed.
        assert await asyncio.gather(*(run(stub, A, i) for i in range(8))) == [8] * 8
        await run(stub, B)
        await run(stub, A)

        async def reported() -> bool:
            loaded = sorted(tuple(r.loaded_adapters) for r in await listed(stub))
            return loaded == [(A,), (B,)]

        await eventually(reported)
        assert await total_loads(stub) == 2
        assert all(r.consecutive_failures == 0 for r in await listed(stub))


async def test_a_request_waits_while_every_slot_runs_other_adapters() -> None:
    async with mesh() as stub:
        # A and B each hold one replica's only slot with a long stream.
        holding = [stub.Generate(generate(x, max_tokens=1500)) for x in (A, B)]
        for call in holding:
            await call.read()
        # Sent now, C would be refused by both: it waits in the router instead.
        waiting = asyncio.create_task(run(stub, C))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        # Base-model requests do not wait behind it.
        chunks = [c async for c in stub.Generate(generate("", prompt="base"))]
        assert chunks[-1].usage.completion_tokens == 8
        holding[0].cancel()  # A's slot frees: C evicts A there
        assert await waiting == 8
        assert all(r.consecutive_failures == 0 for r in await listed(stub))
        holding[1].cancel()


async def test_a_replica_full_of_another_callers_adapters_is_passed_without_a_mark() -> None:
    addresses: list[str] = []
    async with mesh(replicas_out=addresses) as stub, AsyncExitStack() as calls:
        # Another caller (not this router) holds each replica's slot: the
        # router thinks them free, and each refuses.
        holding = []
        for address, adapter_id in zip(addresses, (A, B), strict=True):
            ch = await calls.enter_async_context(grpc.aio.insecure_channel(address))
            call = inference_pb2_grpc.InferenceStub(ch).Generate(
                inference_pb2.InferenceGenerateRequest(
                    request=generate(adapter_id, max_tokens=1500).request, adapter_id=adapter_id
                )
            )
            await call.read()
            holding.append(call)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await run(stub, C)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert all(r.consecutive_failures == 0 for r in await listed(stub))
        for call in holding:
            call.cancel()


async def test_with_affinity_off_adapters_are_ignored() -> None:
    async with mesh(adapter_affinity=False) as stub:
        for i in range(4):  # one at a time, in turn over both replicas
            await run(stub, A, i)

        async def both_loaded() -> bool:
            return [tuple(r.loaded_adapters) for r in await listed(stub)] == [(A,), (A,)]

        await eventually(both_loaded)
        assert await total_loads(stub) == 2


async def test_the_replica_lists_its_slots_and_loaded_adapters() -> None:
    async with mesh() as stub:
        await run(stub, A)

        async def shown() -> bool:
            return any(tuple(r.loaded_adapters) == (A,) for r in await listed(stub))

        await eventually(shown)
        load_fields = inference_pb2.Load.DESCRIPTOR.fields_by_name
        assert "loaded_adapters" in load_fields  # the report the router copies


@pytest.mark.parametrize("hostile", ["../../etc", ".hidden", "a/b", "x" * 129, "ad-\x00"])
async def test_a_hostile_adapter_id_is_refused_before_any_replica(hostile: str) -> None:
    async with mesh() as stub:
        # Route only chooses a replica (the gateway then calls it): refused
        # here, it is the router's own check, not a replica's.
        route = stub.Route()
        await route.write(router_pb2.RouteUpdate(request=generate(hostile)))
        for call in (route, stub.Generate(generate(hostile))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "adapter_id" in (err.value.details() or "")
        assert await total_loads(stub) == 0
