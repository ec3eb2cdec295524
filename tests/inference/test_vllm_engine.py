"""The real vLLM engine on the tiny model, through the Engine interface."""

from __future__ import annotations

import pytest

from services.inference.engine import (
    ChatTurn,
    Delta,
    FinishReason,
    GenerationInput,
    InvalidRequestError,
    SamplingOptions,
)
from services.inference.vllm_engine import VllmEngine
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
        "abort-1", GenerationInput(prompt="Once"), SamplingOptions(max_tokens=1500)
    )
    async for _ in stream:
        break
    assert vllm_engine.num_unfinished_requests() >= 0
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
