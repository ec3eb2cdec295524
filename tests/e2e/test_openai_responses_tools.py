"""Function tools on the Responses API through the whole mesh, with the
official `openai` package: `required` and a named function come back as
`function_call` items whose arguments follow the tool's schema (guided
decoding, as on chat), whole or streamed through `responses.stream`; the
calls and their outputs go back as input for the next turn; other tool
types are refused by name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.responses import FunctionToolParam, ResponseFunctionToolCall

from tests.e2e.test_openai_http import openai_client
from tests.e2e.test_openai_tools import FORM_SCHEMA, SCHEMAS, valid_call
from tests.mesh import Mesh, TenantKey

TOOLS: list[FunctionToolParam] = [
    {
        "type": "function",
        "name": name,
        "description": f"{name} somewhere",
        "parameters": schema,
        "strict": True,
    }
    for name, schema in SCHEMAS.items()
]
ASK = "Weather in Paris?"
# Long arguments whatever is sampled (see test_openai_tools.FORM_SCHEMA).
FORM: FunctionToolParam = {
    "type": "function",
    "name": "fill_form",
    "description": "answers a form",
    "parameters": FORM_SCHEMA,
    "strict": True,
}


@pytest_asyncio.fixture
async def client(mesh: Mesh, tenant_key: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    async with openai_client(mesh, tenant_key.api_key) as client:
        yield client


def calls_of(output: list[Any]) -> list[ResponseFunctionToolCall]:
    assert all(item.type == "function_call" for item in output), output
    return list(output)


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "name": "get_weather"}],
    ids=["required", "named"],
)
async def test_a_required_or_named_tool_is_a_function_call_item(
    mesh: Mesh, client: AsyncOpenAI, tool_choice: Any
) -> None:
    response = await client.responses.create(
        model=mesh.model,
        input=ASK,
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_output_tokens=96,
        temperature=0.0,
    )
    assert response.status == "completed"
    [call] = calls_of(response.output)
    assert call.call_id.startswith("call_") and call.status == "completed"
    if isinstance(tool_choice, dict):
        assert call.name == "get_weather"
    valid_call(call.name, call.arguments)
    assert response.output_text == ""
    assert response.usage is not None and response.usage.output_tokens > 0
    # What was asked, echoed as OpenAI does.
    assert [tool.name for tool in response.tools] == list(SCHEMAS)  # type: ignore[union-attr]
    assert not response.parallel_tool_calls
    if isinstance(tool_choice, dict):
        assert response.tool_choice.name == "get_weather"  # type: ignore[union-attr]
    else:
        assert response.tool_choice == "required"


@pytest.mark.parametrize(
    ("tools", "tool_choice"),
    [
        ([FORM], "required"),
        ([*TOOLS, FORM], {"type": "function", "name": "fill_form"}),
    ],
    ids=["required", "named"],
)
async def test_a_streamed_call_arrives_in_argument_deltas(
    mesh: Mesh, client: AsyncOpenAI, tools: list[FunctionToolParam], tool_choice: Any
) -> None:
    async with client.responses.stream(
        model=mesh.model,
        input=ASK,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_output_tokens=256,
        temperature=0.0,
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1, "the arguments should arrive as they are generated"
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[3 : 3 + len(deltas)] == ["response.function_call_arguments.delta"] * len(deltas)
    assert types[3 + len(deltas) :] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    [call] = calls_of(final.output)
    assert "".join(d.delta for d in deltas) == call.arguments
    # strict: the SDK parsed the arguments against the tool it was given.
    assert call.parsed_arguments == json.loads(call.arguments)  # type: ignore[attr-defined]
    assert call.name == "fill_form"
    valid_call(call.name, call.arguments)
    assert final.status == "completed"


async def test_a_call_and_its_output_as_input_get_a_text_answer(
    mesh: Mesh, client: AsyncOpenAI
) -> None:
    called = await client.responses.create(
        model=mesh.model,
        input=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=96,
        temperature=0.0,
    )
    [call] = calls_of(called.output)
    # An agent's loop: the SDK's own output items go back, then the result.
    history: list[Any] = [
        {"role": "user", "content": ASK},
        *[item.model_dump(exclude_none=True) for item in called.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'},
    ]
    answer = await client.responses.create(
        model=mesh.model,
        input=history,
        tools=TOOLS,
        max_output_tokens=8,
        extra_body={"seed": 1},
    )
    [item] = answer.output
    assert item.type == "message" and answer.output_text


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"type": "web_search"}], "tools[0].type"),
        ([*TOOLS, {"type": "file_search", "vector_store_ids": ["vs_1"]}], "tools[2].type"),
    ],
)
async def test_a_tool_type_that_is_not_served_is_refused_naming_it(
    mesh: Mesh, client: AsyncOpenAI, tools: list[Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=mesh.model, input=ASK, tools=tools, max_output_tokens=2)
    assert info.value.status_code == 400
    assert info.value.param == param
