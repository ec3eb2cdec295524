"""The OpenAI request bodies the HTTP face accepts, as pydantic models.

Only shapes and types are checked here; ranges are the core's to judge (one
definition for both transports). Fields a body does not declare go through
`openai_extras`' one list: dropped when they change nothing, else refused by
name, so a client never believes a knob it sent took effect. The
extra sampling fields (top_k, min_p, ...) are vLLM's extensions, which
OpenAI clients send through `extra_body`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.openai_extras import drop_or_refuse

# Protobuf's unsigned fields; what lies outside cannot even be put on the wire.
UInt32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
UInt64 = Annotated[int, Field(ge=0, le=2**64 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(_Strict):
    """A top-level body: what clients send routinely is dropped (`openai_extras`)."""

    @model_validator(mode="before")
    @classmethod
    def _extras(cls, data: Any) -> Any:
        return drop_or_refuse(data, cls.model_fields)


class StreamOptions(BaseModel):
    # Later options (include_obfuscation, ...) change nothing a client relies on.
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ContentPart(BaseModel):
    # Other part types (images, audio) parse, to be refused by name.
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class FunctionIn(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # Honoured always: a called function's arguments are constrained by its schema.
    strict: bool | None = None


class ToolIn(_Strict):
    type: Literal["function"]
    function: FunctionIn


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class CalledFunction(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessageIn(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # An assistant turn's calls, and a tool turn's answer to one of them.
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class GenerationBody(_Lenient):
    """Fields both endpoints share."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: UInt32 | None = None
    stop: str | list[str] | None = None
    seed: UInt64 | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # The end user, for the caller's own abuse tracking; recorded on the span.
    user: str | None = None
    # Accepted only when empty: this server applies no bias.
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions. top_k -1 (vLLM's "no limit") and 0 both mean none.
    top_k: Annotated[int, Field(ge=-1, le=2**32 - 1)] | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: UInt32 | None = None
    stop_token_ids: list[UInt32] | None = None
    ignore_eos: bool = False


class ChatCompletionRequest(GenerationBody):
    messages: list[ChatMessageIn]
    max_tokens: UInt32 | None = None
    max_completion_tokens: UInt32 | None = None
    logprobs: bool = False
    top_logprobs: UInt32 | None = None
    # See gateway/openai_tools.py: "required" and a named function are honoured
    # by guided decoding; "auto" leaves the answer to the model's template.
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(GenerationBody):
    prompt: str | list[str] | list[UInt32] | list[list[UInt32]]
    # OpenAI's default for completions (chat has none: up to the context).
    max_tokens: UInt32 | None = 16
    logprobs: UInt32 | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: UInt32 | None = None
