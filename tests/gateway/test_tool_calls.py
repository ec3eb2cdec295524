"""Tool choices onto guided decoding and the constrained text back into tool
calls: the schema vLLM's server builds, and REQUIRED's array read as it grows."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.openai_tools import joined_calls
from gateway.tool_calls import ToolCallStream, tool_schema, validate_tools
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError

Tool = generation_pb2.Tool

OBJECT = '{"type":"object","$defs":{"D":{"type":"string"}}}'


def request(**fields: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model="m",
        messages=generation_pb2.ChatMessages(messages=[generation_pb2.ChatMessage(role="user")]),
        tools=[generation_pb2.Tool(name="a", parameters=OBJECT), generation_pb2.Tool(name="b")],
        **fields,  # type: ignore[arg-type]
    )


def test_required_is_an_array_of_calls_with_the_defs_lifted() -> None:
    required = request(
        tool_choice=generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED),
        parallel_tool_calls=False,
    )
    schema = json.loads(tool_schema(required))
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    assert schema["$defs"] == {"D": {"type": "string"}}
    names = [v["properties"]["name"]["enum"] for v in schema["items"]["anyOf"]]
    assert names == [["a"], ["b"]]
    named = request(tool_choice=generation_pb2.ToolChoice(function="b"))
    assert json.loads(tool_schema(named)) == {"type": "object"}


REQUIRED = generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED)


def test_required_calls_stream_as_their_text_grows() -> None:
    stream = ToolCallStream(request(tool_choice=REQUIRED))
    # The name is not whole yet: nothing to send.
    first = stream.convert(generation_pb2.GenerateResponse(text='[{"name":"a'))
    assert not first.text and not first.tool_calls
    # The name is whole: the call's first piece, with its index, id and name.
    named = stream.convert(generation_pb2.GenerateResponse(text='", "parameters": {"x'))
    [head] = named.tool_calls
    assert (head.index, head.name, head.arguments) == (0, "a", '{"x')
    assert head.id.startswith("call_") and not named.text
    # Then only arguments, as they are written, and the next call from index 1.
    more = stream.convert(generation_pb2.GenerateResponse(text='":1}}, {"name":"b","par'))
    assert [(c.index, c.id, c.name, c.arguments) for c in more.tool_calls] == [
        (0, "", "", '":1}'),
        (1, more.tool_calls[1].id, "b", ""),
    ]
    assert more.tool_calls[1].id.startswith("call_") and more.tool_calls[1].id != head.id
    last = stream.convert(
        generation_pb2.GenerateResponse(
            text='ameters":{"s":"}]\\""}}]', finish_reason=generation_pb2.FINISH_REASON_STOP
        )
    )
    assert [(c.index, c.name, c.arguments) for c in last.tool_calls] == [(1, "", '{"s":"}]\\""}')]
    assert last.finish_reason == generation_pb2.FINISH_REASON_TOOL_CALLS and not last.text


@pytest.mark.parametrize("cuts", [[1] * 60, [3, 7, 11, 2, 40], [60]])
def test_required_pieces_concatenate_to_each_parameters_text(cuts: list[int]) -> None:
    text = (
        '[ {"name": "a", "parameters": {"k": [1, {"z": "{"}], "n": -2.5e3}},'
        '{"name":"b","parameters":{}}]'
    )
    stream = ToolCallStream(request(tool_choice=REQUIRED))
    pieces: list[generation_pb2.ToolCall] = []
    at = 0
    for cut in cuts:
        pieces.extend(
            stream.convert(generation_pb2.GenerateResponse(text=text[at : at + cut])).tool_calls
        )
        at += cut
    pieces.extend(
        stream.convert(
            generation_pb2.GenerateResponse(
                text=text[at:], finish_reason=generation_pb2.FINISH_REASON_STOP
            )
        ).tool_calls
    )
    calls = joined_calls(pieces)
    assert [(c.index, c.name) for c in calls] == [(0, "a"), (1, "b")]
    assert [c.arguments for c in calls] == [
        '{"k": [1, {"z": "{"}], "n": -2.5e3}',
        "{}",
    ]
    assert [p.name for p in pieces if p.name] == ["a", "b"]


def test_required_cut_before_a_name_returns_the_text() -> None:
    # Cut short before the first name was whole: the text, as it is, and "length".
    cut = ToolCallStream(request(tool_choice=REQUIRED)).convert(
        generation_pb2.GenerateResponse(
            text='[{"name"', finish_reason=generation_pb2.FINISH_REASON_LENGTH
        )
    )
    assert cut.text == '[{"name"' and not cut.tool_calls
    assert cut.finish_reason == generation_pb2.FINISH_REASON_LENGTH


def test_auto_passes_text_through() -> None:
    chunk = generation_pb2.GenerateResponse(
        text="hi", finish_reason=generation_pb2.FINISH_REASON_STOP
    )
    assert ToolCallStream(request()).convert(chunk) is chunk


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [Tool(name="a" * 65)]}, "tools[0].name"),
        ({"tools": [Tool(name="a"), Tool(name="a")]}, "tools[1].name"),
        ({"tools": [Tool(name="a", description="d" * 1025)]}, "tools[0].description"),
        ({"tools": [Tool(name="a", parameters="{")]}, "tools[0].parameters"),
        ({"tool_choice": generation_pb2.ToolChoice(function="a")}, "tool_choice"),
        (
            {
                "tools": [generation_pb2.Tool(name="a")],
                "tool_choice": generation_pb2.ToolChoice(function="a"),
                "regex": "x",
            },
            "tool_choice",
        ),
    ],
)
def test_bounds_name_the_field(fields: dict[str, object], field: str) -> None:
    bad = generation_pb2.GenerateRequest(
        model="m",
        messages=generation_pb2.ChatMessages(messages=[generation_pb2.ChatMessage(role="user")]),
        **fields,  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidArgumentError) as info:
        validate_tools(bad)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("turn", "field"),
    [
        (
            generation_pb2.ChatMessage(
                role="assistant", tool_calls=[generation_pb2.ToolCall(id="c" * 257, name="a")]
            ),
            "messages[1].tool_calls[0].id",
        ),
        (
            generation_pb2.ChatMessage(role="tool", tool_call_id="c" * 257),
            "messages[1].tool_call_id",
        ),
    ],
)
def test_history_call_ids_are_bounded(turn: generation_pb2.ChatMessage, field: str) -> None:
    bad = request()
    bad.messages.messages.append(turn)
    with pytest.raises(InvalidArgumentError) as info:
        validate_tools(bad)
    assert info.value.field == field
    # At the bound, accepted.
    ok = request()
    ok.messages.messages.append(turn)
    ok.messages.messages[1].tool_call_id = ok.messages.messages[1].tool_call_id[:256]
    for call in ok.messages.messages[1].tool_calls:
        call.id = call.id[:256]
    validate_tools(ok)


def test_tools_need_a_chat() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_tools(
            generation_pb2.GenerateRequest(model="m", prompt="x", tools=[Tool(name="a")])
        )
    assert info.value.field == "tools"


@given(st.lists(st.text(alphabet='[]{}:,"\\ \x01abnamepr0'), max_size=12))
def test_any_text_under_required_is_read_without_failing(pieces: list[str]) -> None:
    # Text the grammar would never write (it cannot be produced on demand): no exception.
    stream = ToolCallStream(request(tool_choice=REQUIRED))
    for piece in ['[{"name":"', *pieces]:
        stream.convert(generation_pb2.GenerateResponse(text=piece))
    stream.convert(
        generation_pb2.GenerateResponse(finish_reason=generation_pb2.FINISH_REASON_LENGTH)
    )
