"""OpenAI's Responses API (`POST /v1/responses`) on the mesh's one Generate.

The body becomes a chat completion body, so one mapping (openai_requests,
openai_tools) serves both: the input (a string, or a list of items) and the
instructions become chat messages, `function_call` items an assistant turn's
tool calls and `function_call_output` items tool turns; the flat function
tools and `tool_choice` become chat's. Only function tools are served; any
other type is refused naming `tools[i].type`.

The answer is one assistant message with one `output_text` part, or one
`function_call` item per call, whole or as the event sequence the SDK's
`responses.stream` accumulates: created, in_progress; for a message
output_item.added, content_part.added, the output_text deltas,
output_text.done, content_part.done, output_item.done; for each call
output_item.added, its function_call_arguments deltas as they are
generated, function_call_arguments.done, output_item.done; then completed,
or incomplete when cut by max_output_tokens. Nothing is stored: `store` is
accepted as a hint and `previous_response_id` is refused by name
(`openai_extras`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.openai_protocol import (
    CalledFunction,
    ChatCompletionRequest,
    ChatMessageIn,
    ContentPart,
    FunctionIn,
    GenerationBody,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    ToolCallIn,
    ToolIn,
    UInt32,
)
from gateway.openai_requests import chat_request
from gateway.openai_responses import JSON, Collected, Writing, sse
from gateway.openai_tools import joined_calls
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError

# Generation fields under their Responses names (for errors).
RESPONSES_PARAMS: Mapping[str, str] = {
    "prompt": "input",
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "json_schema": "text.format",
    "tool_choice.function": "tool_choice.name",
}

# Text parts a message of the input may hold: the client's, and the model's own
# earlier answers sent back as history.
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


class InputMessage(BaseModel):
    # Items sent back from an earlier response carry id, status, annotations...
    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(BaseModel):
    """A call the model made, sent back as history."""

    # Items sent back from an earlier response carry id, status...
    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """The caller's result of a call, for the model to read."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem
ToolChoiceMode = Literal["none", "auto", "required"]


class ResponsesTool(BaseModel):
    """A tool, flat: `{"type": "function", "name", "description",
    "parameters", "strict"}`. Other types' fields parse, to be refused by
    name."""

    model_config = ConfigDict(extra="allow")

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # Honoured always: a called function's arguments are constrained by its schema.
    strict: bool | None = None


class ResponsesToolChoice(BaseModel):
    # Other choices ({"type": "allowed_tools"}, hosted tools) parse, to be refused by name.
    model_config = ConfigDict(extra="allow")

    type: str
    name: str | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    # `verbosity` is a reasoning-model hint; nothing else changes the text.
    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None


class ResponsesRequest(GenerationBody):
    """`responses.create`'s body. The shared sampling fields (and vLLM's
    extensions) come from GenerationBody; chat-only ones are refused below."""

    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: UInt32 | None = None
    text: TextConfig | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: ToolChoiceMode | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None


def responses_request(body: ResponsesRequest) -> generation_pb2.GenerateRequest:
    if body.n not in (None, 1):
        raise InvalidArgumentError("n", "a response has one output")
    if body.response_format is not None:
        raise InvalidArgumentError("response_format", "the Responses API names it text.format")
    messages = (
        [ChatMessageIn(role="system", content=body.instructions)] if body.instructions else []
    )
    items: list[InputItem] = (
        [InputMessage(role="user", content=body.input)]
        if isinstance(body.input, str)
        else list(body.input)
    )
    for i, item in enumerate(items):
        _add_item(messages, item, i)
    chat = ChatCompletionRequest(
        model=body.model,
        messages=messages,
        max_completion_tokens=body.max_output_tokens,
        response_format=_format(body.text),
        tools=None if body.tools is None else [_tool(t, i) for i, t in enumerate(body.tools)],
        tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        **{
            name: getattr(body, name)
            for name in GenerationBody.model_fields
            if name not in ("model", "response_format", "stream_options", "n")
        },
    )
    return chat_request(chat)


def _add_item(messages: list[ChatMessageIn], item: InputItem, index: int) -> None:
    """Appends an input item as chat has it: a call joins the assistant turn
    just before it (an answer's calls are consecutive items), a call's
    output is a tool turn."""
    if isinstance(item, InputMessage):
        messages.append(
            ChatMessageIn(role=item.role, content=_text(item.content, f"input[{index}].content"))
        )
    elif isinstance(item, FunctionCallItem):
        call = ToolCallIn(
            id=item.call_id, function=CalledFunction(name=item.name, arguments=item.arguments)
        )
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant":
            last.tool_calls = [*(last.tool_calls or ()), call]
        else:
            messages.append(ChatMessageIn(role="assistant", tool_calls=[call]))
    else:
        messages.append(
            ChatMessageIn(
                role="tool",
                tool_call_id=item.call_id,
                content=_text(item.output, f"input[{index}].output"),
            )
        )


def _tool(tool: ResponsesTool, index: int) -> ToolIn:
    if tool.type != "function":
        raise InvalidArgumentError(
            f"tools[{index}].type", f"{tool.type!r} tools are not supported; only function"
        )
    if tool.name is None:
        raise InvalidArgumentError(f"tools[{index}].name", "required")
    return ToolIn(
        type="function",
        function=FunctionIn(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters,
            strict=tool.strict,
        ),
    )


def _tool_choice(
    choice: ToolChoiceMode | ResponsesToolChoice | None,
) -> ToolChoiceMode | NamedToolChoice | None:
    if not isinstance(choice, ResponsesToolChoice):
        return choice
    if choice.type != "function":
        raise InvalidArgumentError(
            "tool_choice.type", f"{choice.type!r} is not supported; only function"
        )
    if choice.name is None:
        raise InvalidArgumentError("tool_choice.name", "required")
    return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))


def _text(content: str | list[ContentPart], at: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in _TEXT_PARTS or part.text is None:
            raise InvalidArgumentError(f"{at}[{j}]", "only text parts are supported")
        texts.append(part.text)
    return "".join(texts)


def _format(text: TextConfig | None) -> ResponseFormat | None:
    if text is None or text.format is None or text.format.type == "text":
        return None
    spec = text.format
    if spec.type == "json_object":
        return ResponseFormat(type="json_object")
    if spec.schema_ is None:
        raise InvalidArgumentError("text.format.schema", "required")
    return ResponseFormat(
        type="json_schema",
        json_schema=JsonSchemaFormat(
            name=spec.name or "output", schema=spec.schema_, strict=spec.strict
        ),
    )


class ResponsesWriting(Writing):
    """One generation as a Responses `response` object, or its event stream.

    Streamed, the message item opens with its first text and each call's
    item with the call's first piece (a constrained output has no text); a
    call's item is done when the next call starts, or at the end."""

    id_prefix = "resp"
    params = RESPONSES_PARAMS

    def __init__(
        self, *, request_id: str, model: str, include_usage: bool, top_logprobs: int = 0
    ) -> None:
        super().__init__(
            request_id=request_id,
            model=model,
            include_usage=include_usage,
            top_logprobs=top_logprobs,
        )
        self._request_id = request_id
        self.item_id = f"msg-{request_id}"
        self._sequence = 0
        self._text: list[str] | None = None  # the message's, once its item is open
        self._calls: list[generation_pb2.ToolCall] = []  # whole so far, by output index
        self._open_call: int | None = None  # the output index of the call being written
        self._finish: str | None = None
        # The request's tool settings, echoed as OpenAI does; its defaults until told.
        self._echo: JSON = {"parallel_tool_calls": True, "tool_choice": "auto", "tools": []}

    def requested(self, body: ResponsesRequest) -> None:
        choice = body.tool_choice
        self._echo = {
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "tool_choice": choice.model_dump(exclude_none=True)
            if isinstance(choice, ResponsesToolChoice)
            else choice or "auto",
            "tools": [tool.model_dump() for tool in body.tools or ()],
        }

    def _response(
        self, status: str, output: list[JSON], usage: generation_pb2.Usage | None
    ) -> JSON:
        incomplete = status == "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            **self._echo,
            "store": False,
            "usage": None if usage is None else _usage(usage),
        }

    def _item(self, text: str | None, status: str) -> JSON:
        return {
            "id": self.item_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [] if text is None else [_part(text)],
        }

    def _call_item_id(self, call: generation_pb2.ToolCall) -> str:
        return f"fc-{self._request_id}-{call.index}"

    def _call_item(self, call: generation_pb2.ToolCall, status: str) -> JSON:
        return {
            "id": self._call_item_id(call),
            "type": "function_call",
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": status,
        }

    def body(self, collected: Collected) -> JSON:
        [choice] = collected.choices()
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        output = (
            [self._call_item(call, status) for call in joined_calls(choice.tool_calls)]
            if choice.tool_calls
            else [self._item("".join(choice.text), status)]
        )
        return self._response(status, output, collected.usage)

    def _event(self, type_: str, **fields: Any) -> bytes:
        event = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse(event, type_)

    def events(self, response: generation_pb2.GenerateResponse) -> list[bytes]:
        events = []
        if self._sequence == 0:
            head = self._response("in_progress", [], None)
            events = [
                self._event("response.created", response=head),
                self._event("response.in_progress", response=head),
            ]
        if response.text:
            if self._text is None:
                events.extend(self._open_message())
                self._text = []
            self._text.append(response.text)
            events.append(
                self._event(
                    "response.output_text.delta",
                    output_index=0,
                    item_id=self.item_id,
                    content_index=0,
                    delta=response.text,
                    logprobs=[],
                )
            )
        for piece in response.tool_calls:
            events.extend(self._call_piece(piece))
        if response.finish_reason:
            cut = response.finish_reason == generation_pb2.FINISH_REASON_LENGTH
            self._finish = "incomplete" if cut else "completed"
        return events

    def _open_message(self) -> list[bytes]:
        at = {"output_index": 0, "item_id": self.item_id, "content_index": 0}
        return [
            self._event(
                "response.output_item.added", output_index=0, item=self._item(None, "in_progress")
            ),
            self._event("response.content_part.added", part=_part(""), **at),
        ]

    def _call_piece(self, piece: generation_pb2.ToolCall) -> list[bytes]:
        events = []
        if piece.id:
            # A new call: the one before it is whole.
            events.extend(self._close_call("completed"))
            call = generation_pb2.ToolCall(index=piece.index, id=piece.id, name=piece.name)
            self._calls.append(call)
            self._open_call = len(self._calls) - 1
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=self._open_call,
                    item=self._call_item(call, "in_progress"),
                )
            )
        if piece.arguments and self._open_call is not None:
            self._calls[self._open_call].arguments += piece.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    output_index=self._open_call,
                    item_id=self._call_item_id(self._calls[self._open_call]),
                    delta=piece.arguments,
                )
            )
        return events

    def _close_call(self, status: str) -> list[bytes]:
        if self._open_call is None:
            return []
        index, self._open_call = self._open_call, None
        item = self._call_item(self._calls[index], status)
        return [
            self._event(
                "response.function_call_arguments.done",
                output_index=index,
                item_id=item["id"],
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def closing(self, usage: generation_pb2.Usage) -> list[bytes]:
        status = self._finish or "completed"
        events = self._close_call(status)
        if self._calls:
            output = [self._call_item(call, status) for call in self._calls]
        else:
            if self._text is None:
                # Nothing was written: the message, empty.
                events.extend(self._open_message())
            text = "".join(self._text or ())
            at = {"output_index": 0, "item_id": self.item_id, "content_index": 0}
            output = [self._item(text, status)]
            events += [
                self._event("response.output_text.done", text=text, logprobs=[], **at),
                self._event("response.content_part.done", part=_part(text), **at),
                self._event("response.output_item.done", output_index=0, item=output[0]),
            ]
        events.append(
            self._event(f"response.{status}", response=self._response(status, output, usage))
        )
        return events

    def failure(self, error: JSON) -> list[bytes]:
        detail = error.get("error", {})
        return [
            self._event(
                "error",
                code=detail.get("code"),
                message=detail.get("message", "generation failed"),
                param=detail.get("param"),
            )
        ]


def _part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: generation_pb2.Usage) -> JSON:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
