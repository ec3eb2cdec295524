"""OpenAI's tool calling onto the gRPC contract and back: `tools`,
`tool_choice` and `parallel_tool_calls` onto GenerateRequest, history turns
with `tool_calls` or `tool_call_id` onto ChatMessage, and the generation's
ToolCalls as OpenAI's `tool_calls` (whole, or as the deltas the SDK joins).

`tool_choice` "required" and a named function are honoured through guided
decoding against the tools' JSON schemas (gateway/tool_calls.py). "auto" is
served as the model's chat template allows: the models served today have
templates that know no tools, so they answer in text, and that text is not
parsed for calls. "none" is text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.openai_protocol import ChatCompletionRequest, ChatMessageIn
from maas.v1 import generation_pb2

_MODES = {
    "none": generation_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": generation_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": generation_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def apply_tools(request: generation_pb2.GenerateRequest, body: ChatCompletionRequest) -> None:
    """Sets the request's tool fields from the body; bounds are the core's
    (gateway/tool_calls.py validate_tools), so both transports share them."""
    for tool in body.tools or ():
        function = tool.function
        request.tools.add(
            name=function.name,
            description=function.description or "",
            parameters=""
            if function.parameters is None
            else json.dumps(function.parameters, separators=(",", ":")),
        )
    choice = body.tool_choice
    if isinstance(choice, str):
        request.tool_choice.mode = _MODES[choice]
    elif choice is not None:
        request.tool_choice.function = choice.function.name
    if body.parallel_tool_calls is not None:
        request.parallel_tool_calls = body.parallel_tool_calls


def history_turn(message: ChatMessageIn, turn: generation_pb2.ChatMessage) -> None:
    """Copies a history turn's tool calls or tool call id onto `turn`."""
    for call in message.tool_calls or ():
        turn.tool_calls.add(id=call.id, name=call.function.name, arguments=call.function.arguments)
    if message.tool_call_id is not None:
        turn.tool_call_id = message.tool_call_id


def tool_calls_json(calls: Sequence[generation_pb2.ToolCall], *, delta: bool) -> list[Any]:
    """OpenAI's `tool_calls`: whole in a message; in a chunk, each call's
    first piece carries its id, type and name, later pieces only arguments."""
    out = []
    for call in calls:
        function: dict[str, Any] = {"arguments": call.arguments}
        entry: dict[str, Any] = {"index": call.index} if delta else {}
        if call.id or not delta:
            entry.update(id=call.id, type="function")
            function["name"] = call.name
        entry["function"] = function
        out.append(entry)
    return out


def joined_calls(pieces: Sequence[generation_pb2.ToolCall]) -> list[generation_pb2.ToolCall]:
    """A choice's streamed pieces as whole calls, by index."""
    calls: dict[int, generation_pb2.ToolCall] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, generation_pb2.ToolCall(index=piece.index))
        call.id = call.id or piece.id
        call.name = call.name or piece.name
        call.arguments += piece.arguments
    return [calls[i] for i in sorted(calls)]
