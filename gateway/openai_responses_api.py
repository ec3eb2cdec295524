"""OpenAI's Responses API (`POST /v1/responses`) on the mesh's one Generate.

The input (a string, or a list of messages) and the instructions become chat
messages; the answer is one assistant message with one `output_text` part,
whole or as the event sequence the SDK's `responses.stream` accumulates
(created, in_progress, output_item.added, content_part.added, the
output_text deltas, output_text.done, content_part.done, output_item.done,
then completed, or incomplete when cut by max_output_tokens). Nothing is
stored: `store` is accepted as a hint and `previous_response_id` is refused
by name (`openai_extras`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.openai_protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    ContentPart,
    GenerationBody,
    JsonSchemaFormat,
    ResponseFormat,
    UInt32,
)
from gateway.openai_requests import chat_request
from gateway.openai_responses import JSON, Collected, Writing, sse
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError

# Generation fields under their Responses names (for errors).
RESPONSES_PARAMS: Mapping[str, str] = {
    "prompt": "input",
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "json_schema": "text.format",
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

    input: str | list[InputMessage]
    instructions: str | None = None
    max_output_tokens: UInt32 | None = None
    text: TextConfig | None = None
    # Served only empty: tools are not part of this endpoint yet.
    tools: list[Any] | None = None
    tool_choice: Any = None


def responses_request(body: ResponsesRequest) -> generation_pb2.GenerateRequest:
    if body.n not in (None, 1):
        raise InvalidArgumentError("n", "a response has one output")
    if body.response_format is not None:
        raise InvalidArgumentError("response_format", "the Responses API names it text.format")
    if body.tools:
        raise InvalidArgumentError("tools", "tools are not supported on /v1/responses")
    if body.tool_choice not in (None, "none", "auto"):
        raise InvalidArgumentError("tool_choice", "tools are not supported on /v1/responses")
    messages = (
        [ChatMessageIn(role="system", content=body.instructions)] if body.instructions else []
    )
    items = (
        [InputMessage(role="user", content=body.input)]
        if isinstance(body.input, str)
        else body.input
    )
    for i, item in enumerate(items):
        messages.append(ChatMessageIn(role=item.role, content=_text(item, i)))
    chat = ChatCompletionRequest(
        model=body.model,
        messages=messages,
        max_completion_tokens=body.max_output_tokens,
        response_format=_format(body.text),
        **{
            name: getattr(body, name)
            for name in GenerationBody.model_fields
            if name not in ("model", "response_format", "stream_options", "n")
        },
    )
    return chat_request(chat)


def _text(item: InputMessage, index: int) -> str:
    if isinstance(item.content, str):
        return item.content
    texts = []
    for j, part in enumerate(item.content):
        if part.type not in _TEXT_PARTS or part.text is None:
            raise InvalidArgumentError(
                f"input[{index}].content[{j}]", "only text parts are supported"
            )
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
    """One generation as a Responses `response` object, or its event stream."""

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
        self.item_id = f"msg-{request_id}"
        self._sequence = 0
        self._text: list[str] = []
        self._finish: str | None = None

    def _response(self, status: str, text: str | None, usage: generation_pb2.Usage | None) -> JSON:
        incomplete = status == "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": [] if text is None else [self._item(text, status)],
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
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

    def body(self, collected: Collected) -> JSON:
        [choice] = collected.choices()
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        return self._response(status, "".join(choice.text), collected.usage)

    def _event(self, type_: str, **fields: Any) -> bytes:
        event = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse(event, type_)

    def events(self, response: generation_pb2.GenerateResponse) -> list[bytes]:
        events = []
        if self._sequence == 0:
            at = {"output_index": 0, "item_id": self.item_id, "content_index": 0}
            events = [
                self._event("response.created", response=self._response("in_progress", None, None)),
                self._event(
                    "response.in_progress", response=self._response("in_progress", None, None)
                ),
                self._event(
                    "response.output_item.added",
                    output_index=0,
                    item=self._item(None, "in_progress"),
                ),
                self._event("response.content_part.added", part=_part(""), **at),
            ]
        if response.text:
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
        if response.finish_reason:
            cut = response.finish_reason == generation_pb2.FINISH_REASON_LENGTH
            self._finish = "incomplete" if cut else "completed"
        return events

    def closing(self, usage: generation_pb2.Usage) -> list[bytes]:
        text = "".join(self._text)
        status = self._finish or "completed"
        at = {"output_index": 0, "item_id": self.item_id, "content_index": 0}
        final = self._response(status, text, usage)
        return [
            self._event("response.output_text.done", text=text, logprobs=[], **at),
            self._event("response.content_part.done", part=_part(text), **at),
            self._event("response.output_item.done", output_index=0, item=self._item(text, status)),
            self._event(f"response.{status}", response=final),
        ]

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
