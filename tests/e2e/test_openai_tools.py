"""Tool calling and typed JSON output through the whole mesh, with the
official `openai` package over HTTP and with the gRPC contract: the tiny
model's output is really constrained by the tools' schemas (guided decoding),
so whatever it samples, the calls parse and validate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from maas.v1 import gateway_pb2_grpc, generation_pb2
from tests.mesh import Mesh, TenantKey
from tests.support import bad_request_fields

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
# A call whose arguments take ~100 tokens whatever the model samples (every key
# is forced): under load vLLM hands a lagging reader several tokens at once,
# and a dozen-token call (get_weather's) then arrives in one delta.
FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {f"answer_{i:02d}": {"type": "string", "enum": ["yes", "no"]} for i in range(12)},
    "required": [f"answer_{i:02d}" for i in range(12)],
    "additionalProperties": False,
}
FORM_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {"name": "fill_form", "description": "answers a form", "parameters": FORM_SCHEMA},
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": name, "description": f"{name} somewhere", "parameters": schema},
    }
    for name, schema in SCHEMAS.items()
]
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


@pytest_asyncio.fixture
async def client(mesh: Mesh, tenant_key: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    # No retries: a refusal must reach the test, not be retried.
    async with AsyncOpenAI(
        base_url=f"{mesh.http}/v1", api_key=tenant_key.api_key, max_retries=0
    ) as client:
        yield client


def valid_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), {**SCHEMAS, "fill_form": FORM_SCHEMA}[name])


async def test_a_named_tool_is_called_with_arguments_valid_against_its_schema(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    reply = await client.chat.completions.create(
        model=mesh.model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        temperature=0.0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    valid_call("get_weather", call.function.arguments)


async def test_a_named_tool_streams_as_tool_call_deltas(mesh: Mesh, client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=mesh.model,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=64,
        temperature=0.0,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) > 1, "the arguments should arrive in pieces"
    first, *rest = deltas
    assert first.id is not None and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == "get_time"
    assert all(d.index == 0 and d.id is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    valid_call("get_time", arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not c.choices[0].delta.content for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
async def test_required_calls_one_of_the_tools(
    mesh: Mesh, client: AsyncOpenAI, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": mesh.model,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        # One call: the tiny model might otherwise list calls up to max_tokens.
        "parallel_tool_calls": False,
        "max_tokens": 96,
        "temperature": 0.0,
    }
    if stream:
        chunks = [c async for c in await client.chat.completions.create(**request, stream=True)]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
        assert {d.index for d in deltas} == {0}
        [name] = [d.function.name for d in deltas if d.function and d.function.name]
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        finish = chunks[-1].choices[0].finish_reason
    else:
        reply = await client.chat.completions.create(**request)
        calls = reply.choices[0].message.tool_calls
        assert calls is not None and len(calls) == 1
        name, arguments = calls[0].function.name, calls[0].function.arguments
        finish = reply.choices[0].finish_reason
    assert finish == "tool_calls"
    assert name in SCHEMAS and arguments is not None
    valid_call(name, arguments)


def streamed_calls(chunks: list[Any]) -> dict[int, list[Any]]:
    """Each call's deltas, by index, from a streamed chat completion."""
    calls: dict[int, list[Any]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or ():
            calls.setdefault(delta.index, []).append(delta)
    return calls


async def test_a_required_call_streams_its_arguments_as_they_are_generated(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    request: dict[str, Any] = {
        "model": mesh.model,
        "messages": ASK,
        "tools": [FORM_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 256,
        "seed": 11,
    }
    whole = await client.chat.completions.create(**request)
    [expected] = whole.choices[0].message.tool_calls or []
    chunks = [c async for c in await client.chat.completions.create(**request, stream=True)]
    calls = streamed_calls(chunks)
    assert list(calls) == [0]
    [first, *rest] = calls[0]
    # The name once, on the first delta, with the call's id; later deltas only arguments.
    assert first.id is not None and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == expected.function.name
    assert rest and all(d.id is None and d.function.name is None for d in rest)
    carrying = [
        c for c in chunks for d in c.choices[0].delta.tool_calls or () if d.function.arguments
    ]
    assert len(carrying) > 1, "the arguments should arrive as they are generated"
    arguments = "".join(d.function.arguments or "" for d in calls[0])
    assert arguments == expected.function.arguments
    valid_call(expected.function.name, arguments)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "tool_calls"
    assert all(not c.choices[0].delta.content for c in chunks)


async def test_parallel_required_calls_stream_with_their_own_indexes(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    request: dict[str, Any] = {
        "model": mesh.model,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 160,
        "seed": 3,
    }
    whole = await client.chat.completions.create(**request)
    expected = whole.choices[0].message.tool_calls or []
    chunks = [c async for c in await client.chat.completions.create(**request, stream=True)]
    calls = streamed_calls(chunks)
    assert len(expected) >= 2, "this seed's answer should call more than once"
    assert list(calls) == list(range(len(expected)))
    ids = [deltas[0].id for deltas in calls.values()]
    assert all(i is not None and i.startswith("call_") for i in ids) and len(set(ids)) == len(ids)
    for index, deltas in calls.items():
        assert [d.function.name for d in deltas if d.function.name] == [
            expected[index].function.name
        ]
        arguments = "".join(d.function.arguments or "" for d in deltas)
        assert arguments == expected[index].function.arguments
    complete = [
        c for c in expected if whole.choices[0].finish_reason == "tool_calls" or c != expected[-1]
    ]
    for call in complete:
        valid_call(call.function.name, call.function.arguments)


async def test_a_history_with_a_tool_result_is_answered(mesh: Mesh, client: AsyncOpenAI) -> None:
    messages: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    ]
    reply = await client.chat.completions.create(
        model=mesh.model, messages=messages, tools=TOOLS, max_tokens=8, seed=1
    )
    # "auto": the tiny model's chat template knows no tools, so it answers in text.
    choice = reply.choices[0]
    assert choice.message.content and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")

    # An agent's loop: the SDK's own message object goes back as history.
    called = await client.chat.completions.create(
        model=mesh.model, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96,
        parallel_tool_calls=False, temperature=0.0,
    )  # fmt: skip
    message = called.choices[0].message
    assert message.tool_calls is not None
    follow_up: list[Any] = [
        *ASK,
        message,
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "21"},
    ]
    again = await client.chat.completions.create(
        model=mesh.model, messages=follow_up, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert again.choices[0].message.content


class Sea(BaseModel):
    calm: bool
    colour: Literal["blue", "grey", "green"]


async def test_parse_returns_the_pydantic_object(mesh: Mesh, client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.parse(
        model=mesh.model,
        messages=[{"role": "user", "content": "Describe the sea."}],
        response_format=Sea,
        max_tokens=64,
        temperature=0.0,
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Sea)


async def test_parse_with_a_strict_function_tool(mesh: Mesh, client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.parse(
        model=mesh.model,
        messages=[{"role": "user", "content": "Log the sea."}],
        tools=[openai.pydantic_function_tool(Sea)],
        tool_choice={"type": "function", "function": {"name": "Sea"}},
        max_tokens=64,
        temperature=0.0,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None
    assert isinstance(calls[0].function.parsed_arguments, Sea)


async def test_grpc_generate_with_a_named_tool_returns_tool_calls(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    request = generation_pb2.GenerateRequest(
        model=mesh.model,
        messages=generation_pb2.ChatMessages(
            messages=[generation_pb2.ChatMessage(role="user", content="Weather in Rome?")]
        ),
        tools=[
            generation_pb2.Tool(name=name, parameters=json.dumps(schema))
            for name, schema in SCHEMAS.items()
        ],
        tool_choice=generation_pb2.ToolChoice(function="get_weather"),
        max_tokens=64,
        temperature=0.0,
    )
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Generate(request, metadata=(("authorization", f"Bearer {tenant_key.api_key}"),))
        chunks = [chunk async for chunk in call]
    pieces = [p for c in chunks for p in c.tool_calls]
    assert all(not c.text for c in chunks)
    assert pieces[0].name == "get_weather" and pieces[0].id.startswith("call_")
    valid_call("get_weather", "".join(p.arguments for p in pieces))
    assert chunks[-1].finish_reason == generation_pb2.FINISH_REASON_TOOL_CALLS
    assert chunks[-1].usage.completion_tokens > 0


DEEP: dict[str, Any] = {"type": "object"}
for _ in range(40):
    DEEP = {"type": "object", "properties": {"x": DEEP}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
            "tools",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": DEEP}}]},
            "tools[0].parameters",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            # Valid JSON, but a schema the grammar backend cannot compile.
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "no-such-type"}},
                    }
                ],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            "tools[0].parameters",
        ),
        (
            {
                "tools": TOOLS,
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
        ),
    ],
)
async def test_bad_tool_input_is_a_bad_request_naming_it(
    mesh: Mesh, client: AsyncOpenAI, fields: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": mesh.model, "messages": ASK, "max_tokens": 2}
    request.update(fields)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**request)
    assert info.value.status_code == 400
    assert info.value.param == param


async def test_bad_tool_input_over_grpc_is_invalid_argument_naming_it(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    request = generation_pb2.GenerateRequest(
        model=mesh.model,
        messages=generation_pb2.ChatMessages(
            messages=[generation_pb2.ChatMessage(role="user", content="hi")]
        ),
        tools=[generation_pb2.Tool(name="get_weather", parameters="[1]")],
    )
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Generate(request, metadata=(("authorization", f"Bearer {tenant_key.api_key}"),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["tools[0].parameters"]
