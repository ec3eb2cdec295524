"""The gRPC Gateway fuzzed with Hypothesis-generated `GenerateRequest`s over
the real mesh: no request, however odd, may end in INTERNAL or UNKNOWN.

Every field is drawn in and out of its documented range (NaN and infinite
floats, zero and 2**32 - 1 counts, token ids past the vocabulary, odd
Unicode, long and empty strings, broken regexes and JSON schemas). A stream
that ends OK must also hold what a user checks: one finished chunk per
choice, no more tokens than asked for, and a ledger that bills exactly the
usage its last chunk reported. Some examples stop reading after a few chunks
(a caller that goes away); what they produced must still reach the ledger.

Generation stays cheap: max_tokens, when set within range, is at most
TOKEN_CAP; when it is unset (up to the context) or out of range, the example
reads at most TOKEN_CAP chunks before it walks away."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from maas.v1 import gateway_pb2_grpc, generation_pb2
from maas_cli.client import MaasClient
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.conftest import Mesh, TenantFactory, TenantKey, bystander
from tests.support import bad_request_fields, eventually

# The mesh's event loop (another thread) draws from `random` while Hypothesis
# generates, which Hypothesis takes for a strategy using it.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

# About 60 small generations fit CI's share of a minute on two cores.
CI_EXAMPLES = 60
# Tokens an example may generate per choice (or chunks it reads before leaving).
TOKEN_CAP = 4
# A request that has not ended in this long is hung: a defect, not a slow engine.
CALL_TIMEOUT_S = 60.0
DEFECTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
# The tiny model's vocabulary and context: ids and lengths on both sides of each.
VOCAB, CONTEXT = 4096, 2048

# Protobuf strings are UTF-8: a lone surrogate cannot even be sent.
odd_text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "\u202e\u200b\ufeff",
            "🦀" * 50,
            "a" * 300,
            "Hello",
            "\U0010ffff",
            "{{ raise_exception('x') }}",
        ]
    ),
)
some_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
token_ids = st.lists(
    st.one_of(st.integers(0, VOCAB - 1), st.sampled_from([VOCAB, UINT32_MAX])), max_size=12
)
edge_uint32 = st.sampled_from([0, CONTEXT, CONTEXT + 1, 100_000_000, UINT32_MAX])
float32 = st.one_of(
    st.floats(width=32),
    st.sampled_from([-0.0, 2.5, -1.0, -2.5, math.inf, -math.inf, math.nan]),
)


def in_range_float(lo: float, hi: float, *, exclude_min: bool = False) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, exclude_min=exclude_min, width=32)


# Each field in its documented range (protos/maas/v1/generation.proto), cheap.
IN_RANGE: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": st.integers(1, TOKEN_CAP),
    "temperature": in_range_float(0, 2),
    "top_p": in_range_float(0, 1, exclude_min=True),
    "seed": st.integers(0, UINT64_MAX),
    "stop": st.lists(some_text, max_size=4),
    "top_k": st.integers(0, VOCAB + 1),
    "min_p": in_range_float(0, 1),
    "presence_penalty": in_range_float(-2, 2),
    "frequency_penalty": in_range_float(-2, 2),
    "repetition_penalty": in_range_float(0, 2, exclude_min=True),
    "min_tokens": st.integers(0, TOKEN_CAP),
    "stop_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=4),
    "ignore_eos": st.booleans(),
    "n": st.integers(1, 3),
    "logprobs": st.integers(0, 20),
}
# Each field anywhere its wire type allows, edges first.
ANYWHERE: dict[str, st.SearchStrategy[Any]] = {
    **{name: float32 for name, value in IN_RANGE.items() if name.endswith(("p", "penalty"))},
    "temperature": float32,
    "max_tokens": edge_uint32,
    "min_tokens": edge_uint32,
    "top_k": st.integers(0, UINT32_MAX),
    "stop": st.lists(odd_text, max_size=10),
    "stop_token_ids": token_ids,
    "n": st.sampled_from([0, 16, 17, UINT32_MAX]),
    "logprobs": st.sampled_from([21, UINT32_MAX]),
}
VALID_REGEXES = ["[a-z]{1,4}", "(a|b)*c", "\\d+", ".{1,3}", "(?:yes|no)"]
BROKEN_REGEXES = ["(", "[", "a{2,1}", "(?P<x>a)(?P=x)", "\\", "a**"]
VALID_SCHEMAS = [
    '{"type":"object"}',
    '{"type":"string","maxLength":3}',
    '{"type":"integer"}',
    '{"enum":["a","b"]}',
    '{"type":"array","items":{"type":"boolean"},"maxItems":2}',
]
odd_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
).map(json.dumps)
BROKEN_SCHEMAS = ['{"type":"nonsense"}', '{"$ref":"#/nowhere"}', "{", "[]", '{"type":"object",}']


@st.composite
def generate_requests(draw: st.DrawFn, model: str) -> generation_pb2.GenerateRequest:
    """A request of one of two kinds: "hostile" (every field anywhere, any
    input or none, any model name) or "in range" (the served model, a real
    input, every field in its documented range: these reach the engine)."""
    hostile = draw(st.sampled_from([True, False, False]))
    request = generation_pb2.GenerateRequest(
        model=draw(st.one_of(st.just(model), odd_text)) if hostile else model
    )
    inputs = ["prompt", "messages", "prompt_token_ids"]
    which = draw(st.sampled_from([*inputs, None] if hostile else inputs))
    text = odd_text if hostile else some_text
    if which == "prompt":
        long_prompt = st.just("x" * 3 * CONTEXT)
        request.prompt = draw(st.one_of(text, long_prompt) if hostile else text)
    elif which == "messages":
        roles = st.sampled_from(["system", "user", "assistant", "tool"])
        if hostile:
            roles = st.one_of(roles, st.sampled_from(["", "root"]), odd_text)
        request.messages.SetInParent()
        turns = st.lists(st.tuples(roles, text), min_size=0 if hostile else 1, max_size=4)
        for role, content in draw(turns):
            request.messages.messages.add(role=role, content=content)
    elif which == "prompt_token_ids":
        request.prompt_token_ids.SetInParent()
        ids = token_ids if hostile else st.lists(st.integers(0, VOCAB - 1), min_size=1)
        request.prompt_token_ids.ids.extend(draw(ids))
    fields = IN_RANGE
    if hostile:
        fields = {
            name: st.one_of(IN_RANGE[name], ANYWHERE.get(name, IN_RANGE[name])) for name in IN_RANGE
        }
    for name, value in draw(st.fixed_dictionaries({}, optional=fields)).items():
        if isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    constraint = draw(st.sampled_from([None, None, "regex", "json_schema"]))
    if constraint == "regex":
        regexes = st.sampled_from(VALID_REGEXES)
        if hostile:
            regexes = st.one_of(regexes, st.sampled_from(BROKEN_REGEXES), odd_text)
        request.regex = draw(regexes)
    elif constraint == "json_schema":
        schemas = st.sampled_from(VALID_SCHEMAS)
        if hostile:
            schemas = st.one_of(schemas, st.sampled_from(BROKEN_SCHEMAS), odd_json)
        request.json_schema = draw(schemas)
    _draw_tools(draw, request, hostile)
    return request


TOOL_NAMES = st.from_regex(r"[a-zA-Z0-9_-]{1,8}", fullmatch=True)
TOOL_MODES = [
    generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED,
    generation_pb2.TOOL_CHOICE_MODE_NONE,
    generation_pb2.TOOL_CHOICE_MODE_AUTO,
    generation_pb2.TOOL_CHOICE_MODE_REQUIRED,
]


def _draw_tools(draw: st.DrawFn, request: generation_pb2.GenerateRequest, hostile: bool) -> None:
    """Tools (in range: valid names and schemas) and a tool choice: a mode or
    one of the tools by name (hostile: any name, any schema, any input)."""
    choice = draw(st.sampled_from([None, None, "mode", "function"]))
    if choice is None:
        return
    names = st.one_of(TOOL_NAMES, odd_text) if hostile else TOOL_NAMES
    schemas = st.sampled_from(["", *VALID_SCHEMAS[:1]])
    if hostile:
        schemas = st.one_of(schemas, st.sampled_from(BROKEN_SCHEMAS), odd_json)
    tools = draw(
        st.lists(st.tuples(names, schemas), min_size=0 if hostile else 1, max_size=3)
        if hostile
        else st.lists(st.tuples(names, schemas), min_size=1, max_size=3, unique_by=lambda t: t[0])
    )
    for name, parameters in tools:
        request.tools.add(name=name, parameters=parameters)
    if choice == "mode":
        request.tool_choice.mode = draw(st.sampled_from(TOOL_MODES))
    else:
        known = [name for name, _ in tools]
        picks = st.sampled_from(known) if known else odd_text
        request.tool_choice.function = draw(st.one_of(picks, odd_text) if hostile else picks)


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    chunks: list[generation_pb2.GenerateResponse]
    walked_away: bool


async def run_one(
    mesh: Mesh, tenant: TenantKey, request: generation_pb2.GenerateRequest, read_at_most: int | None
) -> Outcome:
    """Sends the request and reads the stream (walking away after
    `read_at_most` chunks, when set); then checks the ledger."""
    metadata = (("authorization", f"Bearer {tenant.api_key}"),)
    async with (
        MaasClient(mesh.gateway, tenant.api_key) as client,
        grpc.aio.insecure_channel(mesh.gateway) as channel,
    ):
        before = await client.usage()
        chunks: list[generation_pb2.GenerateResponse] = []
        code, details, walked_away = grpc.StatusCode.OK, "", False
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        try:
            async for chunk in call:
                chunks.append(chunk)
                if read_at_most is not None and len(chunks) >= read_at_most:
                    walked_away = True
                    break
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
        finally:
            call.cancel()
        outcome = Outcome(code, details, chunks, walked_away)
        if not chunks:
            return outcome

        async def recorded() -> bool:
            return (await client.usage()).requests == before.requests + 1

        await eventually(recorded)
        after = await client.usage()
        if code == grpc.StatusCode.OK and not walked_away:
            usage = chunks[-1].usage
            assert after.prompt_tokens - before.prompt_tokens == usage.prompt_tokens
            assert after.completion_tokens - before.completion_tokens == usage.completion_tokens
        return outcome


def check(request: generation_pb2.GenerateRequest, outcome: Outcome) -> None:
    assert outcome.code not in DEFECTS, f"{outcome.code.name}: {outcome.details}"
    # The router passes a replica's failure on as UNAVAILABLE naming the replica's status.
    hidden = [code.name for code in DEFECTS if f"({code.name})" in outcome.details]
    assert not hidden, f"a replica failed with {hidden}: {outcome.code.name}: {outcome.details}"
    if outcome.code != grpc.StatusCode.OK or outcome.walked_away:
        return
    choices = request.n if request.HasField("n") else 1
    finished = [c for c in outcome.chunks if c.finish_reason]
    assert sorted(c.index for c in finished) == list(range(choices))
    assert outcome.chunks[-1].finish_reason, "the stream ended OK before its last choice finished"
    if request.HasField("max_tokens"):
        assert outcome.chunks[-1].usage.completion_tokens <= request.max_tokens * choices


def fuzz_gateway(mesh: Mesh, tenant: TenantKey, loop: asyncio.AbstractEventLoop) -> None:
    """Runs in a worker thread; every call runs on the mesh's event loop."""

    @fuzz_settings(CI_EXAMPLES)
    @given(
        request=generate_requests(mesh.model),
        leave_after=st.one_of(st.none(), st.integers(1, TOKEN_CAP)),
    )
    def one_call(request: generation_pb2.GenerateRequest, leave_after: int | None) -> None:
        cheap = request.HasField("max_tokens") and request.max_tokens <= TOKEN_CAP
        read_at_most = leave_after if cheap else (leave_after or TOKEN_CAP)
        note(f"request: {request!r}; reads at most {read_at_most} chunks")
        outcome = asyncio.run_coroutine_threadsafe(
            run_one(mesh, tenant, request, read_at_most), loop
        ).result()
        note(f"ended {outcome.code.name} {outcome.details!r} after {len(outcome.chunks)} chunks")
        check(request, outcome)

    one_call()


async def test_gateway_never_answers_internal_or_unknown(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    fuzzer = await new_tenant()
    async with bystander(mesh, await new_tenant()):
        await asyncio.to_thread(fuzz_gateway, mesh, fuzzer, asyncio.get_running_loop())


async def _generate(
    mesh: Mesh, tenant: TenantKey, request: generation_pb2.GenerateRequest
) -> list[generation_pb2.GenerateResponse]:
    metadata = (("authorization", f"Bearer {tenant.api_key}"),)
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        return [chunk async for chunk in call]


async def test_greedy_sampling_with_several_choices_is_a_bad_request(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    tenant, other = await new_tenant(), await new_tenant()
    greedy = generation_pb2.GenerateRequest(
        model=mesh.model, prompt="Hello", max_tokens=2, temperature=0, n=2
    )
    ordinary = generation_pb2.GenerateRequest(model=mesh.model, prompt="Hello", max_tokens=2)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _generate(mesh, tenant, greedy)
        # Whatever the answer, the replica must still serve everyone else.
        assert (await _generate(mesh, other, ordinary))[-1].finish_reason
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert set(bad_request_fields(refused.value)) & {"n", "temperature"}
    finally:
        # The tests after this one need the replica back (the router's ejection is timed).
        async def serving() -> bool:
            try:
                return bool(await _generate(mesh, other, ordinary))
            except grpc.aio.AioRpcError:
                return False

        await eventually(serving, within_s=120)
