"""The Responses API's mapping onto Generate and its event stream when a
generation fails after its head: an `error` event ends it (no `[DONE]`: the
Responses stream has none). The failure comes from the fake core of
test_openai_stream_failure (a replica dying on cue cannot be arranged)."""

from __future__ import annotations

import json

import pytest

from gateway.openai_responses_api import ResponsesRequest, responses_request
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


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
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
