"""The simulated engine on its own: continuous batching, preemption, prefix
hits, aborts, determinism and live load, over a profile whose steps take a
fraction of a millisecond (no vLLM)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace

import pytest

from services.inference.engine import (
    Delta,
    DuplicateRequestError,
    EngineDeadError,
    FinishReason,
    GenerationInput,
    InvalidRequestError,
    SamplingOptions,
)
from services.inference.sim_engine import SimEngine, SimLimits
from services.inference.sim_kv import BLOCK_SIZE
from services.inference.sim_profiles import TINY_CPU

# The CPU profile's shapes with steps about 20x shorter: tests wait little.
FAST = replace(
    TINY_CPU,
    name="fast-test",
    step_base_s=0.2e-3,
    step_per_seq_s=0.005e-3,
    step_per_prefill_token_s=0.001e-3,
)


def engine(**limits: object) -> SimEngine:
    return SimEngine(FAST, limits=replace(SimLimits.of(FAST), **limits))  # type: ignore[arg-type]


def prompt(text: str) -> GenerationInput:
    return GenerationInput(prompt=text)


async def collect(e: SimEngine, rid: str, text: str, **options: object) -> list[Delta]:
    opts = SamplingOptions(**options)  # type: ignore[arg-type]
    return [d async for d in e.generate(rid, prompt(text), opts)]


def tokens(deltas: list[Delta], index: int = 0) -> list[int]:
    return [t for d in deltas if d.index == index for t in d.token_ids]


@pytest.fixture
async def sim() -> AsyncIterator[SimEngine]:
    async with engine() as e:
        yield e


async def test_requests_share_steps(sim: SimEngine) -> None:
    results = await asyncio.gather(
        *(collect(sim, f"r{i}", f"prompt {i}", max_tokens=16, ignore_eos=True) for i in range(32))
    )
    assert all(len(tokens(r)) == 16 for r in results)
    assert all(r[-1].finish_reason is FinishReason.LENGTH for r in results)
    assert all(r[-1].completion_tokens == 16 for r in results)
    # 512 tokens, one per request per step: a few steps more than 16, never hundreds.
    assert sim.steps < 32
    assert sim.load().running == 0
    assert sim.num_unfinished_requests() == 0


async def test_preempted_requests_still_complete_with_the_same_tokens() -> None:
    # 12 blocks for 4 requests that each grow to 7: preemption is certain.
    long = "a prompt of forty bytes, give or take..."
    async with engine(kv_cache_tokens=12 * BLOCK_SIZE, max_context_length=12 * BLOCK_SIZE) as e:
        results = await asyncio.gather(
            *(collect(e, f"r{i}", f"{i}{long}", max_tokens=100, ignore_eos=True) for i in range(4))
        )
        assert e.preemptions > 0
        assert e.load().kv_cache_usage == 0
    assert all(len(tokens(r)) == 100 for r in results)
    async with engine() as alone:
        again = await collect(alone, "r3", f"3{long}", max_tokens=100, ignore_eos=True)
    assert tokens(again) == tokens(results[3])


async def test_a_repeated_prefix_is_served_from_the_cache(sim: SimEngine) -> None:
    text = "The same long system prompt. " * 30  # 870 bytes: 218 tokens
    first = await collect(sim, "a", text, max_tokens=4)
    second = await collect(sim, "b", text + " A different question?", max_tokens=4)
    assert first[0].cached_tokens == 0
    prompt_tokens = first[0].prompt_tokens
    assert second[0].cached_tokens == prompt_tokens // BLOCK_SIZE * BLOCK_SIZE
    assert sim.load().prefix_cache_hit_rate > 0


async def test_a_fully_cached_prompt_still_computes_its_last_token(sim: SimEngine) -> None:
    text = "x" * (BLOCK_SIZE * 4 * 4)  # exactly 4 blocks of tokens
    await collect(sim, "a", text, max_tokens=2)
    again = await collect(sim, "b", text, max_tokens=2)
    assert again[0].cached_tokens == 3 * BLOCK_SIZE


async def test_closing_the_stream_aborts_and_frees_blocks(sim: SimEngine) -> None:
    opts = SamplingOptions(max_tokens=1000, ignore_eos=True)
    async with aclosing(sim.generate("r", prompt("go on"), opts)) as stream:
        await anext(stream)
        assert sim.load().kv_cache_usage > 0
    assert sim.load().kv_cache_usage == 0
    assert sim.num_unfinished_requests() == 0
    assert sim.load().tokens_in_flight == 0


async def test_abort_ends_running_requests_and_names_them(sim: SimEngine) -> None:
    opts = SamplingOptions(max_tokens=1000, ignore_eos=True)
    stream = sim.generate("r", prompt("go on"), opts)
    first = await anext(stream)
    assert await sim.abort(["r", "unknown"]) == ["r"]
    rest = [d async for d in stream]
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert len(tokens([first, *rest])) < 1000
    assert sim.load().kv_cache_usage == 0
    assert sim.num_unfinished_requests() == 0


async def test_waiting_requests_can_be_aborted() -> None:
    async with engine(max_num_seqs=1) as e:
        opts = SamplingOptions(max_tokens=1000, ignore_eos=True)
        running = e.generate("a", prompt("first"), opts)
        await anext(running)
        waiting = asyncio.ensure_future(collect(e, "b", "second", max_tokens=5))
        await asyncio.sleep(0.01)
        assert e.load().waiting == 1
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert e.load().waiting == 0
        await running.aclose()
        assert e.num_unfinished_requests() == 0


async def test_output_is_deterministic_for_a_seed() -> None:
    async def run(seed: int) -> list[int]:
        async with SimEngine(FAST, seed=seed) as e:
            return tokens(await collect(e, "r", "hello there", max_tokens=20))

    assert await run(1) == await run(1)
    assert await run(1) != await run(2)


async def test_a_request_seed_overrides_the_engines(sim: SimEngine) -> None:
    a = await collect(sim, "a", "hello", max_tokens=10, seed=5)
    b = await collect(sim, "b", "hello", max_tokens=10, seed=5)
    c = await collect(sim, "c", "hello", max_tokens=10, seed=6)
    assert tokens(a) == tokens(b) != tokens(c)
    assert "".join(d.text for d in a) == "".join(d.text for d in b)


async def test_a_live_request_id_is_refused(sim: SimEngine) -> None:
    opts = SamplingOptions(max_tokens=1000, ignore_eos=True)
    async with aclosing(sim.generate("r", prompt("go on"), opts)) as stream:
        await anext(stream)
        with pytest.raises(DuplicateRequestError):
            await collect(sim, "r", "again")
    assert len(tokens(await collect(sim, "r", "again", max_tokens=3))) == 3


async def test_load_reports_follow_the_steps(sim: SimEngine) -> None:
    seen = []

    async def watch() -> None:
        async with aclosing(sim.watch_load()) as loads:
            async for load in loads:
                seen.append(load)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await collect(sim, "r", "go", max_tokens=20, ignore_eos=True)
    await asyncio.sleep(0.01)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert seen[0].running == 0
    assert any(load.running == 1 and load.tokens_in_flight > 0 for load in seen)
    assert seen[-1].running == 0 and seen[-1].tokens_in_flight == 0
    assert sim.last_step_at() > 0


async def test_choices_stops_and_lengths(sim: SimEngine) -> None:
    many = await collect(sim, "n", "hi", n=3, max_tokens=5, ignore_eos=True)
    assert {len(tokens(many, i)) for i in range(3)} == {5}
    assert len({tuple(tokens(many, i)) for i in range(3)}) == 3
    assert many[-1].completion_tokens == 15
    # Without ignore_eos the "model" stops on its own, not before min_tokens.
    natural = await collect(sim, "e", "hi", max_tokens=2000, min_tokens=3)
    assert natural[-1].finish_reason is FinishReason.STOP
    assert 3 <= len(tokens(natural)) <= 2 * FAST.mean_output_tokens
    assert tokens(natural)[-1] == FAST.eos_token_id
    probe = tokens(await collect(sim, "p", "stop me", max_tokens=10, ignore_eos=True))
    stopped = await collect(
        sim, "s", "stop me", max_tokens=10, ignore_eos=True, stop_token_ids=(probe[4],)
    )
    assert tokens(stopped) == probe[:5]
    assert stopped[-1].finish_reason is FinishReason.STOP


async def test_logprobs_and_chat_input(sim: SimEngine) -> None:
    chat = GenerationInput(messages=())
    with pytest.raises(InvalidRequestError):
        await anext(sim.generate("c", chat, SamplingOptions()))
    deltas = [
        d
        async for d in sim.generate(
            "l", prompt("hi"), SamplingOptions(max_tokens=3, logprobs=2, ignore_eos=True)
        )
    ]
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert len(logprobs) == 3 and all(len(lp.top) == 2 for lp in logprobs)


async def test_constraints_and_context_are_checked(sim: SimEngine) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await collect(sim, "j", "hi", json_schema='{"type": "object"}')
    assert err.value.field == "json_schema"
    with pytest.raises(InvalidRequestError) as err:
        await collect(sim, "m", "hi", max_tokens=FAST.max_context_length)
    assert err.value.field == "max_tokens"
    assert await sim.count_tokens(prompt("12345678")) == 2


async def test_a_killed_engine_fails_its_streams_and_says_why(sim: SimEngine) -> None:
    opts = SamplingOptions(max_tokens=1000, ignore_eos=True)
    stream = sim.generate("r", prompt("go on"), opts)
    await anext(stream)
    dead = asyncio.create_task(sim.wait_dead())
    await asyncio.sleep(0)
    assert not dead.done()
    sim.kill("injected")
    with pytest.raises(EngineDeadError):
        await anext(stream)
    assert await dead == "injected"
    with pytest.raises(EngineDeadError):
        await sim.check_health()
    with pytest.raises(EngineDeadError):
        await collect(sim, "x", "hi")


async def first_token_order(policy: str) -> list[str]:
    """Which of two waiting requests starts first: "low" (priority 5) came before "high" (0)."""
    order: list[str] = []

    async def run(e: SimEngine, rid: str, priority: int) -> None:
        opts = SamplingOptions(max_tokens=2, ignore_eos=True)
        async for _ in e.generate(rid, prompt(rid), opts, priority=priority):
            if rid not in order:
                order.append(rid)

    async with engine(max_num_seqs=1, policy=policy) as e:
        long = SamplingOptions(max_tokens=1000, ignore_eos=True)
        blocker = e.generate("blocker", prompt("x"), long)
        await anext(blocker)
        low = asyncio.create_task(run(e, "low", 5))
        await asyncio.sleep(0.005)
        high = asyncio.create_task(run(e, "high", 0))
        await asyncio.sleep(0.005)
        assert e.load().waiting == 2
        await blocker.aclose()
        await asyncio.gather(low, high)
    return order


async def test_waiting_requests_run_by_priority_or_in_arrival_order() -> None:
    assert await first_token_order("priority") == ["high", "low"]
    assert await first_token_order("fcfs") == ["low", "high"]


async def test_preemption_takes_the_lowest_priority_first() -> None:
    # Room for two requests' prompts, not for both to grow: one must yield.
    async with engine(kv_cache_tokens=8 * BLOCK_SIZE, max_context_length=8 * BLOCK_SIZE) as e:
        opts = SamplingOptions(max_tokens=100, ignore_eos=True)
        finished: list[str] = []

        async def run(rid: str, priority: int) -> None:
            async for _ in e.generate(rid, prompt(rid * 4), opts, priority=priority):
                pass
            finished.append(rid)

        await asyncio.gather(run("late", 9), run("urgent", 0))
        assert e.preemptions > 0
    assert finished == ["urgent", "late"]
