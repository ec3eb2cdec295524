"""The Responses API's mapping onto Generate and its event stream when a
generation fails after its head: an `error` event ends it (no `[DONE]`: the
Responses stream has none). The failure comes from the fake core of
test_openai_stream_failure (a replica dying on cue cannot be arranged)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.openai_responses_api import ResponsesRequest, ResponsesWriting, responses_request
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError
from tests.gateway.test_openai_stream_failure import FakeMidStreamFailureCore, client


def test_input_and_instructions_become_chat_messages() -> None:
    request = responses_request(
        ResponsesRequest.model_validate(
            {
                "model": "m",
                "instructions": "Be brief.",
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                    # An earlier answer sent back as history, with its id and status.
                    {
                        "type": "message",
                        "id": "msg-1",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "yo", "annotations": []}],
                    },
                ],
                "max_output_tokens": 5,
                "temperature": 0.5,
                "text": {"format": {"type": "json_object"}},
            }
        )
    )
    assert [(m.role, m.content) for m in request.messages.messages] == [
        ("system", "Be brief."),
        ("user", "hi"),
        ("assistant", "yo"),
    ]
    assert request.max_tokens == 5 and request.temperature == 0.5
    assert request.json_schema == '{"type":"object"}'


IMAGE = [{"type": "input_image", "image_url": "https://example.com/sea.png"}]
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def test_function_tools_and_the_call_history_map_as_chat_maps_them() -> None:
    request = responses_request(
        ResponsesRequest.model_validate(
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    # The earlier answer's two calls, as the SDK sends its items back.
                    {
                        "type": "function_call",
                        "id": "fc-1",
                        "status": "completed",
                        "call_id": "call_a",
                        "name": "get_weather",
                        "arguments": '{"city":"Paris"}',
                    },
                    {
                        "type": "function_call",
                        "call_id": "call_b",
                        "name": "get_weather",
                        "arguments": '{"city":"Rome"}',
                    },
                    {"type": "function_call_output", "call_id": "call_a", "output": "21"},
                    {
                        "type": "function_call_output",
                        "call_id": "call_b",
                        "output": [{"type": "input_text", "text": "25"}],
                    },
                ],
                "tools": [TOOL],
                "tool_choice": {"type": "function", "name": "get_weather"},
                "parallel_tool_calls": False,
            }
        )
    )
    [tool] = request.tools
    assert (tool.name, tool.description) == ("get_weather", "The weather in a city.")
    assert json.loads(tool.parameters) == TOOL["parameters"]
    assert request.tool_choice.function == "get_weather"
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    turns = request.messages.messages
    assert [t.role for t in turns] == ["user", "assistant", "tool", "tool"]
    assert [(c.id, c.name, c.arguments) for c in turns[1].tool_calls] == [
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_weather", '{"city":"Rome"}'),
    ]
    assert [(t.tool_call_id, t.content) for t in turns[2:]] == [("call_a", "21"), ("call_b", "25")]
    required = responses_request(
        ResponsesRequest.model_validate(
            {"model": "m", "input": "hi", "tools": [TOOL], "tool_choice": "required"}
        )
    )
    assert required.tool_choice.mode == generation_pb2.TOOL_CHOICE_MODE_REQUIRED


def sse_events(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(c.decode().split("data: ", 1)[1]) for c in chunks]


def test_streamed_calls_are_items_whose_arguments_arrive_in_deltas() -> None:
    writing = ResponsesWriting(request_id="r1", model="m", include_usage=False)
    Call = generation_pb2.ToolCall
    chunks = [
        generation_pb2.GenerateResponse(),
        generation_pb2.GenerateResponse(
            tool_calls=[Call(index=0, id="call_a", name="f", arguments='{"x"')]
        ),
        generation_pb2.GenerateResponse(
            tool_calls=[Call(index=0, arguments=":1}"), Call(index=1, id="call_b", name="g")]
        ),
        generation_pb2.GenerateResponse(
            tool_calls=[Call(index=1, arguments="{}")],
            finish_reason=generation_pb2.FINISH_REASON_TOOL_CALLS,
        ),
    ]
    events = sse_events(
        [e for c in chunks for e in writing.events(c)] + writing.closing(generation_pb2.Usage())
    )
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[5]["arguments"] == '{"x":1}'
    final = events[-1]["response"]["output"]
    assert [(i["type"], i["call_id"], i["name"], i["arguments"]) for i in final] == [
        ("function_call", "call_a", "f", '{"x":1}'),
        ("function_call", "call_b", "g", "{}"),
    ]
    assert final[0] == events[6]["item"] and final[1] == events[10]["item"]
    assert events[2]["item"]["id"] == events[3]["item_id"] == final[0]["id"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[1].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": IMAGE}]},
            "input[0].output[0]",
        ),
        ({"input": [{"role": "user", "content": IMAGE}]}, "input[0].content[0]"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ],
)
def test_what_cannot_be_served_is_refused_by_name(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        responses_request(ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields}))
    assert info.value.message.startswith(f"{param}: ")


async def test_a_stream_that_fails_ends_with_an_error_event() -> None:
    core = FakeMidStreamFailureCore()
    async with client(core) as http:
        response = await http.post(
            "/v1/responses", json={"model": "m", "input": "hi", "stream": True}
        )
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    payloads = [json.loads(e.split("data: ", 1)[1]) for e in events]
    assert [p["type"] for p in payloads] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "error",
    ]
    assert all(e.startswith(f"event: {p['type']}\n") for e, p in zip(events, payloads, strict=True))
    assert payloads[-1]["code"] == "unavailable"
    assert core.closed


async def test_a_whole_response_that_fails_gets_the_errors_status() -> None:
    async with client(FakeMidStreamFailureCore()) as http:
        response = await http.post("/v1/responses", json={"model": "m", "input": "hi"})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable_error"


async def test_the_route_is_in_the_openapi_schema() -> None:
    async with client(FakeMidStreamFailureCore()) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/v1/responses", "/health"} <= set(paths)
