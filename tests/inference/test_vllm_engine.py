"""The real vLLM engine on the tiny model, through the Engine interface."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest

from services.inference.engine import (
    ChatTurn,
    Delta,
    FinishReason,
    GenerationInput,
    InvalidRequestError,
    ModelKind,
    SamplingOptions,
)
from services.inference.vllm_engine import VllmEngine, model_kind
from tests.support import eventually


async def collect(
    engine: VllmEngine, inp: GenerationInput, options: SamplingOptions, rid: str
) -> list[Delta]:
    return [d async for d in engine.generate(rid, inp, options)]


async def test_streams_deltas_up_to_max_tokens(vllm_engine: VllmEngine) -> None:
    deltas = await collect(
        vllm_engine, GenerationInput(prompt="The sea"), SamplingOptions(max_tokens=12), "len-1"
    )
    assert len(deltas) > 1
    assert sum(len(d.token_ids) for d in deltas) == 12
    assert deltas[-1].completion_tokens == 12
    assert deltas[-1].finish_reason is FinishReason.LENGTH
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_same_seed_same_text(vllm_engine: VllmEngine) -> None:
    options = SamplingOptions(max_tokens=16, temperature=1.0, seed=1234)
    inp = GenerationInput(prompt="import os")
    first = await collect(vllm_engine, inp, options, "seed-1")
    second = await collect(vllm_engine, inp, options, "seed-2")
    other = await collect(
        vllm_engine, inp, SamplingOptions(max_tokens=16, temperature=1.0, seed=99), "seed-3"
    )
    text = "".join(d.text for d in first)
    assert text == "".join(d.text for d in second)
    assert [t for d in first for t in d.token_ids] != [t for d in other for t in d.token_ids]


async def test_stop_string_cuts_the_output(vllm_engine: VllmEngine) -> None:
    inp = GenerationInput(prompt="def main():")
    options = SamplingOptions(max_tokens=64, temperature=0.0)
    free = "".join(d.text for d in await collect(vllm_engine, inp, options, "stop-free"))
    assert len(free) > 4
    stop = free[2:4]
    deltas = await collect(
        vllm_engine, inp, SamplingOptions(max_tokens=64, temperature=0.0, stop=(stop,)), "stop"
    )
    cut = "".join(d.text for d in deltas)
    assert stop not in cut
    assert free.startswith(cut)
    assert deltas[-1].finish_reason is FinishReason.STOP


async def test_chat_uses_the_template_and_counts_match(vllm_engine: VllmEngine) -> None:
    inp = GenerationInput(messages=(ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")))
    counted = await vllm_engine.count_tokens(inp)
    plain = await vllm_engine.count_tokens(GenerationInput(prompt="Be brief. Hi"))
    assert counted > plain  # the ChatML markers are tokens too
    deltas = await collect(vllm_engine, inp, SamplingOptions(max_tokens=4), "chat")
    assert deltas[-1].prompt_tokens == counted


async def test_closing_the_stream_aborts_in_the_engine(vllm_engine: VllmEngine) -> None:
    stream = vllm_engine.generate(
        "abort-1", GenerationInput(prompt="Once"), SamplingOptions(max_tokens=1500, ignore_eos=True)
    )
    async for _ in stream:
        break
    assert vllm_engine.num_unfinished_requests() == 1  # still generating its 1500 tokens
    await stream.aclose()
    await eventually(lambda: vllm_engine.num_unfinished_requests() == 0)
    # The engine still serves afterwards.
    deltas = await collect(
        vllm_engine, GenerationInput(prompt="Again"), SamplingOptions(max_tokens=3), "after"
    )
    assert deltas[-1].completion_tokens == 3


@pytest.mark.parametrize(
    ("inp", "options", "field"),
    [
        (GenerationInput(prompt=""), SamplingOptions(max_tokens=4), "prompt"),
        (GenerationInput(prompt="sea " * 5000), SamplingOptions(max_tokens=4), "prompt"),
        (GenerationInput(prompt="hi"), SamplingOptions(max_tokens=5000), "max_tokens"),
        (GenerationInput(prompt="hi"), SamplingOptions(temperature=-1.0), "temperature"),
        (GenerationInput(prompt="hi"), SamplingOptions(top_p=0.0), "top_p"),
    ],
)
async def test_bad_requests_are_refused_before_the_engine(
    vllm_engine: VllmEngine, inp: GenerationInput, options: SamplingOptions, field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await collect(vllm_engine, inp, options, f"bad-{field}")
    assert info.value.field == field
    deltas = await collect(
        vllm_engine, GenerationInput(prompt="still fine"), SamplingOptions(max_tokens=2), "ok"
    )
    assert deltas[-1].completion_tokens == 2


async def test_an_adapter_not_loaded_is_refused_naming_the_model(vllm_engine: VllmEngine) -> None:
    stream = vllm_engine.generate(
        "no-adapter", GenerationInput(prompt="hi"), SamplingOptions(max_tokens=2), "ad-unknown"
    )
    with pytest.raises(InvalidRequestError) as info:
        await anext(stream)
    assert info.value.field == "model"
    assert vllm_engine.load().tokens_in_flight == 0  # nothing promised for it


async def test_n_choices_each_finish_and_usage_counts_all(vllm_engine: VllmEngine) -> None:
    deltas = await collect(
        vllm_engine,
        GenerationInput(prompt="class"),
        SamplingOptions(max_tokens=6, n=3, temperature=1.0, seed=5),
        "n-3",
    )
    by_choice: dict[int, list[Delta]] = {}
    for d in deltas:
        by_choice.setdefault(d.index, []).append(d)
    assert sorted(by_choice) == [0, 1, 2]
    for choice in by_choice.values():
        assert sum(len(d.token_ids) for d in choice) == 6
        assert choice[-1].finish_reason is FinishReason.LENGTH
    assert deltas[-1].completion_tokens == 18


async def test_logprobs_have_the_asked_shape(vllm_engine: VllmEngine) -> None:
    deltas = await collect(
        vllm_engine,
        GenerationInput(prompt="import"),
        SamplingOptions(max_tokens=5, logprobs=3, temperature=0.0),
        "logprobs",
    )
    tokens = [t for d in deltas for t in d.token_ids]
    entries = [e for d in deltas for e in d.logprobs]
    assert len(entries) == len(tokens) == 5
    for token, entry in zip(tokens, entries, strict=True):
        assert entry.sampled.token_id == token
        assert entry.sampled.logprob <= 0.0
        assert len(entry.top) == 3
        assert [t.logprob for t in entry.top] == sorted(
            (t.logprob for t in entry.top), reverse=True
        )
        # Greedy: the sampled token is the most likely one.
        assert entry.top[0].token_id == token
        assert entry.top[0].text == entry.sampled.text
    # Each token's text as vLLM decoded it alone: together, the completion.
    assert "".join(e.sampled.text or "" for e in entries) == "".join(d.text for d in deltas)
    assert all(e.sampled.text for e in entries)


async def test_logprobs_give_k_alternatives_when_the_sampled_token_is_not_among_them(
    vllm_engine: VllmEngine,
) -> None:
    # Hot sampling (the tiny model's logits are nearly flat) picks tokens
    # outside the top 2, which vLLM then adds as a third entry; the answer
    # still holds exactly the 2 asked for.
    deltas = await collect(
        vllm_engine,
        GenerationInput(prompt="import"),
        SamplingOptions(max_tokens=24, logprobs=2, temperature=2.0, seed=11, ignore_eos=True),
        "logprobs-hot",
    )
    entries = [e for d in deltas for e in d.logprobs]
    assert len(entries) == 24
    outside = [e for e in entries if e.sampled.token_id not in {t.token_id for t in e.top}]
    assert outside, "hot sampling drew some token outside the top 2"
    assert all(len(e.top) == 2 for e in entries)
    for e in outside:
        assert e.sampled.logprob <= e.top[-1].logprob


async def test_token_id_prompts_and_stop_token_ids(vllm_engine: VllmEngine) -> None:
    ids = tuple(range(100, 110))
    free = await collect(
        vllm_engine,
        GenerationInput(token_ids=ids),
        SamplingOptions(max_tokens=8, temperature=0.0, ignore_eos=True),
        "ids-free",
    )
    generated = [t for d in free for t in d.token_ids]
    assert free[-1].prompt_tokens == 10
    stopper = generated[3]
    cut = await collect(
        vllm_engine,
        GenerationInput(token_ids=ids),
        SamplingOptions(max_tokens=8, temperature=0.0, stop_token_ids=(stopper,)),
        "ids-stop",
    )
    cut_tokens = [t for d in cut for t in d.token_ids]
    assert cut_tokens == generated[: generated.index(stopper) + 1]
    assert cut[-1].finish_reason is FinishReason.STOP


async def test_min_tokens_and_penalties_are_accepted(vllm_engine: VllmEngine) -> None:
    deltas = await collect(
        vllm_engine,
        GenerationInput(prompt="x"),
        SamplingOptions(
            max_tokens=10,
            min_tokens=10,
            top_k=20,
            min_p=0.05,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            repetition_penalty=1.2,
            seed=1,
        ),
        "penalties",
    )
    assert deltas[-1].completion_tokens == 10


async def test_regex_constrains_the_output(vllm_engine: VllmEngine) -> None:
    deltas = await collect(
        vllm_engine,
        GenerationInput(prompt="Answer:"),
        SamplingOptions(max_tokens=20, regex="(yes|no)", temperature=1.0, seed=3),
        "regex",
    )
    assert "".join(d.text for d in deltas) in {"yes", "no"}


async def test_json_schema_constrains_the_output(vllm_engine: VllmEngine) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    deltas = await collect(
        vllm_engine,
        GenerationInput(prompt="JSON:"),
        SamplingOptions(max_tokens=40, json_schema=json.dumps(schema), temperature=0.0),
        "json",
    )
    parsed = json.loads("".join(d.text for d in deltas))
    assert isinstance(parsed["ok"], bool)


async def test_abort_by_id_frees_the_sequence(vllm_engine: VllmEngine) -> None:
    stream = vllm_engine.generate(
        "abort-rpc", GenerationInput(prompt="Go"), SamplingOptions(max_tokens=1500)
    )
    first = await anext(stream)
    assert first.completion_tokens >= 1
    assert await vllm_engine.abort(["abort-rpc", "never-existed"]) == ["abort-rpc"]
    rest = [d async for d in stream]
    assert rest == [] or rest[-1].finish_reason is FinishReason.ABORT
    await eventually(lambda: vllm_engine.num_unfinished_requests() == 0)


async def test_load_reports_running_requests_then_zero(vllm_engine: VllmEngine) -> None:
    watcher = vllm_engine.watch_load()
    initial = await anext(watcher)
    assert initial.running == 0
    stream = vllm_engine.generate(
        "load-1", GenerationInput(prompt="Go"), SamplingOptions(max_tokens=1500)
    )
    await anext(stream)
    busy = await anext(watcher)
    while busy.running == 0:
        busy = await anext(watcher)
    assert busy.running == 1
    assert 0 < busy.tokens_in_flight <= 1500
    assert 0.0 < busy.kv_cache_usage <= 1.0
    await stream.aclose()
    idle = await anext(watcher)
    while idle.running != 0:
        idle = await anext(watcher)
    assert idle.tokens_in_flight == 0
    await watcher.aclose()


async def test_32_concurrent_streams_complete_with_correct_usage(
    vllm_engine: VllmEngine,
) -> None:
    async def one(i: int) -> list[Delta]:
        return await collect(
            vllm_engine,
            GenerationInput(prompt=f"stream {i}"),
            SamplingOptions(max_tokens=24, ignore_eos=True),
            f"many-{i}",
        )

    results = await asyncio.gather(*(one(i) for i in range(32)))
    for deltas in results:
        assert sum(len(d.token_ids) for d in deltas) == 24
        assert deltas[-1].completion_tokens == 24
        assert deltas[-1].finish_reason is FinishReason.LENGTH


async def test_an_oversized_request_leaves_its_neighbours_unharmed(
    vllm_engine: VllmEngine,
) -> None:
    async def normal(i: int) -> int:
        deltas = await collect(
            vllm_engine,
            GenerationInput(prompt=f"neighbour {i}"),
            SamplingOptions(max_tokens=16, ignore_eos=True),
            f"neighbour-{i}",
        )
        return deltas[-1].completion_tokens

    async def oversized() -> None:
        await collect(
            vllm_engine, GenerationInput(prompt="sea " * 5000), SamplingOptions(), "oversized"
        )

    results = await asyncio.gather(
        *(normal(i) for i in range(8)), oversized(), return_exceptions=True
    )
    assert results[:8] == [16] * 8
    assert isinstance(results[8], InvalidRequestError)


async def test_a_repeated_prompt_is_served_from_the_prefix_cache(
    vllm_engine: VllmEngine,
) -> None:
    prompt = GenerationInput(prompt="The lighthouse keeper wrote in her log every night. " * 8)
    first = await collect(vllm_engine, prompt, SamplingOptions(max_tokens=2), "cache-1")
    second = await collect(vllm_engine, prompt, SamplingOptions(max_tokens=2), "cache-2")
    assert second[-1].cached_tokens > 0
    assert second[-1].cached_tokens <= second[-1].prompt_tokens
    assert first[-1].prompt_tokens == second[-1].prompt_tokens


async def test_a_higher_priority_request_takes_the_next_free_slot(
    vllm_engine: VllmEngine,
) -> None:
    long = SamplingOptions(max_tokens=1500, ignore_eos=True)

    def start(rid: str, priority: int) -> AsyncGenerator[Delta, None]:
        return vllm_engine.generate(rid, GenerationInput(prompt=rid), long, priority=priority)

    slots = vllm_engine.capacity.max_num_seqs
    runners = [start(f"prio-run-{i}", 1) for i in range(slots)]
    await asyncio.gather(*(anext(r) for r in runners))  # every slot is taken
    started: list[str] = []

    async def first_token(rid: str, priority: int) -> None:
        async with aclosing(start(rid, priority)) as stream:
            await anext(stream)
            started.append(rid)
            await asyncio.Event().wait()  # holds its slot until cancelled

    waiting = [asyncio.create_task(first_token(f"prio-wait-{i}", 1)) for i in range(4)]
    await eventually(lambda: vllm_engine.load().waiting == 4)
    # Arrives after the four, in a lower (more urgent) priority.
    waiting.append(asyncio.create_task(first_token("prio-urgent", 0)))
    await eventually(lambda: vllm_engine.load().waiting == 5)
    try:
        await runners.pop().aclose()  # frees exactly one slot
        await eventually(lambda: bool(started))
        assert started == ["prio-urgent"]
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for runner in runners:
            await runner.aclose()
    await eventually(lambda: vllm_engine.num_unfinished_requests() == 0)


class _Tokenizer:
    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template


def test_the_engine_knows_what_its_model_is_for(vllm_engine: VllmEngine) -> None:
    # The tiny model ships a chat template (local_models/tiny_llama.py).
    assert vllm_engine.model_info.kind is ModelKind.CHAT
    assert model_kind("generate", _Tokenizer(None)) is ModelKind.COMPLETION
    assert model_kind("pooling", _Tokenizer("{{ x }}")) is ModelKind.EMBEDDING
