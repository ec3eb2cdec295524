"""OpenAI request bodies onto GenerateRequest: every parameter lands on its
field, and what the proto cannot express is refused by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.openai_protocol import ChatCompletionRequest, CompletionRequest
from gateway.openai_requests import (
    CHAT_PARAMS,
    COMPLETION_PARAMS,
    chat_request,
    completion_request,
    openai_param,
)
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError

USER = {"role": "user", "content": "hi"}


def chat(**fields: Any) -> generation_pb2.GenerateRequest:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    body.update(fields)
    return chat_request(ChatCompletionRequest.model_validate(body))


def completion(**fields: Any) -> generation_pb2.GenerateRequest:
    body: dict[str, Any] = {"model": "m", "prompt": "Once"}
    body.update(fields)
    return completion_request(CompletionRequest.model_validate(body))


def test_chat_parameters_land_on_their_fields() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        max_completion_tokens=7,
        max_tokens=99,
        temperature=0.5,
        top_p=0.9,
        n=2,
        stop="\n",
        seed=3,
        logprobs=True,
        top_logprobs=4,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        top_k=-1,
        min_p=0.05,
        repetition_penalty=1.1,
        min_tokens=2,
        stop_token_ids=[5],
        ignore_eos=True,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "required": ["a"]}},
        },
    )
    assert [(m.role, m.content) for m in request.messages.messages] == [
        ("system", "be brief"),
        ("user", "ab"),
    ]
    assert request.max_tokens == 7  # max_completion_tokens wins over the older name
    assert request.temperature == pytest.approx(0.5)
    assert request.top_p == pytest.approx(0.9)
    assert (request.n, list(request.stop), request.seed) == (2, ["\n"], 3)
    assert request.logprobs == 4
    assert request.presence_penalty == pytest.approx(0.1)
    assert request.frequency_penalty == pytest.approx(0.2)
    assert not request.HasField("top_k")  # vLLM's -1: no limit
    assert request.min_p == pytest.approx(0.05)
    assert request.repetition_penalty == pytest.approx(1.1)
    assert (request.min_tokens, list(request.stop_token_ids), request.ignore_eos) == (2, [5], True)
    assert json.loads(request.json_schema) == {"type": "object", "required": ["a"]}
    assert " " not in request.json_schema


def test_chat_defaults_leave_fields_unset() -> None:
    request = chat()
    for field in ("max_tokens", "temperature", "top_p", "n", "seed", "logprobs", "top_k"):
        assert not request.HasField(field), field
    assert request.WhichOneof("constraint") is None
    assert chat(logprobs=True).logprobs == 0
    assert json.loads(chat(response_format={"type": "json_object"}).json_schema) == {
        "type": "object"
    }


def test_completion_prompt_forms() -> None:
    assert completion().prompt == "Once"
    assert completion(prompt=["Once"]).prompt == "Once"
    assert list(completion(prompt=[1, 2, 3]).prompt_token_ids.ids) == [1, 2, 3]
    assert list(completion(prompt=[[4, 5]]).prompt_token_ids.ids) == [4, 5]
    # OpenAI's default for completions.
    assert completion().max_tokens == 16
    assert completion(logprobs=2).logprobs == 2
    assert completion(best_of=2, n=2).n == 2


def test_tools_and_a_tool_history_land_on_their_fields() -> None:
    request = chat(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
    )
    assert [(t.name, t.parameters) for t in request.tools] == [("f", '{"type":"object"}')]
    assert request.tool_choice.function == "f"
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    assistant, tool = request.messages.messages[1:]
    assert assistant.content == "" and assistant.tool_calls[0].name == "f"
    assert tool.tool_call_id == "c1"
    assert chat(tools=[], tool_choice="required").tool_choice.mode == (
        generation_pb2.TOOL_CHOICE_MODE_REQUIRED
    )


def test_an_empty_chat_is_still_a_chat() -> None:
    request = chat(messages=[])
    assert request.WhichOneof("input") == "messages"


@pytest.mark.parametrize(
    ("build", "param"),
    [
        (lambda: chat(top_logprobs=2), "top_logprobs"),
        (lambda: chat(logit_bias={"5": 1.0}), "logit_bias"),
        (lambda: chat(stream_options={"include_usage": True}), "stream_options"),
        (
            lambda: chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content[0]",
        ),
        (lambda: chat(messages=[{"role": "assistant"}]), "messages[0].content"),
        (
            lambda: chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format.json_schema.schema",
        ),
        (lambda: completion(prompt=["one", "two"]), "prompt"),
        (lambda: completion(echo=True), "echo"),
        (lambda: completion(suffix="end"), "suffix"),
        (lambda: completion(best_of=3), "best_of"),
    ],
)
def test_what_cannot_be_served_is_refused_by_name(
    build: Callable[[], generation_pb2.GenerateRequest], param: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build()
    assert info.value.field == param


@pytest.mark.parametrize(
    ("field", "renames", "param"),
    [
        ("prompt", CHAT_PARAMS, "messages"),
        ("messages[1].role", CHAT_PARAMS, "messages[1].role"),
        ("logprobs", CHAT_PARAMS, "top_logprobs"),
        ("json_schema", CHAT_PARAMS, "response_format"),
        ("stop[1]", CHAT_PARAMS, "stop[1]"),
        ("prompt_token_ids", COMPLETION_PARAMS, "prompt"),
        ("logprobs", COMPLETION_PARAMS, "logprobs"),
        ("temperature", COMPLETION_PARAMS, "temperature"),
    ],
)
def test_generation_fields_name_the_openai_parameter(
    field: str, renames: dict[str, str], param: str
) -> None:
    assert openai_param(field, renames) == param
