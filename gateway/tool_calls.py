"""Tool calling on the gRPC contract, for both transports: the bounds of a
request's tools, the JSON schema that makes `tool_choice` REQUIRED or a named
function hold (guided decoding, as vLLM's server does it), and the
generation's text turned into tool calls.

What is constrained is called: a named function's output is its arguments
object; REQUIRED's is a JSON array of {"name", "parameters"} objects. AUTO is
not parsed: the served models' chat templates know no tools, so what they
write is text, and guessing calls out of free text would invent them."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError
from services.inference.engine import InvalidRequestError, check_json_schema

# OpenAI's own limit on tools in one request.
MAX_TOOLS = 128
# OpenAI's rule for function names.
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# OpenAI's limit on a function's description; it goes into the prompt.
MAX_DESCRIPTION_CHARS = 1024
# A call id sent back in the history (a call's `id`, a tool turn's
# `tool_call_id`): the chat template renders it, yet it is no content that
# the prompt's byte bound counts. Ours are 29 characters; any client's fit.
MAX_CALL_ID_CHARS = 256

_MODE = generation_pb2.ToolChoiceMode
_ANY_OBJECT = {"type": "object"}


def mode(request: generation_pb2.GenerateRequest) -> int:
    """The tool choice's mode; a named function reads as REQUIRED."""
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "function":
        return _MODE.TOOL_CHOICE_MODE_REQUIRED
    if which == "mode" and choice.mode != _MODE.TOOL_CHOICE_MODE_UNSPECIFIED:
        return int(choice.mode)
    return _MODE.TOOL_CHOICE_MODE_AUTO if request.tools else _MODE.TOOL_CHOICE_MODE_NONE


def constrains(request: generation_pb2.GenerateRequest) -> bool:
    """Whether the output is tool calls (REQUIRED or a named function)."""
    return mode(request) == _MODE.TOOL_CHOICE_MODE_REQUIRED


def validate_tools(request: generation_pb2.GenerateRequest) -> str | None:
    """INVALID_ARGUMENT naming the field of any tool, tool choice or tool
    call out of bounds; checked before anything is charged. Returns the
    checked `tool_schema` when the tools constrain the output, else None."""
    tools = request.tools
    if tools and request.WhichOneof("input") != "messages":
        raise InvalidArgumentError("tools", "need a chat request (messages)")
    if len(tools) > MAX_TOOLS:
        raise InvalidArgumentError("tools", f"at most {MAX_TOOLS}")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgumentError(
                f"tools[{i}].name", "must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-'"
            )
        if tool.name in names:
            raise InvalidArgumentError(f"tools[{i}].name", f"{tool.name!r} is named twice")
        names.add(tool.name)
        if len(tool.description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgumentError(
                f"tools[{i}].description", f"is over {MAX_DESCRIPTION_CHARS} characters"
            )
        if tool.parameters:
            _check_schema(tool.parameters, f"tools[{i}].parameters")
    which = request.tool_choice.WhichOneof("choice")
    if which is not None and not tools:
        raise InvalidArgumentError("tool_choice", "needs tools")
    if which == "function" and request.tool_choice.function not in names:
        raise InvalidArgumentError(
            "tool_choice.function", f"{request.tool_choice.function!r} is not one of the tools"
        )
    if constrains(request) and request.WhichOneof("constraint") is not None:
        raise InvalidArgumentError(
            "tool_choice",
            f"a required or named tool cannot be combined with {request.WhichOneof('constraint')}",
        )
    schema = None
    if constrains(request):
        # The schemas together, wrapped: what the grammar backend compiles.
        schema = tool_schema(request)
        _check_schema(schema, "tools")
    for i, turn in enumerate(request.messages.messages):
        if turn.tool_calls and turn.role != "assistant":
            raise InvalidArgumentError(f"messages[{i}].tool_calls", "only an assistant calls tools")
        if len(turn.tool_call_id) > MAX_CALL_ID_CHARS:
            raise InvalidArgumentError(
                f"messages[{i}].tool_call_id", f"is over {MAX_CALL_ID_CHARS} characters"
            )
        for j, call in enumerate(turn.tool_calls):
            if not TOOL_NAME.fullmatch(call.name):
                raise InvalidArgumentError(
                    f"messages[{i}].tool_calls[{j}].name",
                    "must be 1 to 64 of a-z, A-Z, 0-9, '_' and '-'",
                )
            if len(call.id) > MAX_CALL_ID_CHARS:
                raise InvalidArgumentError(
                    f"messages[{i}].tool_calls[{j}].id", f"is over {MAX_CALL_ID_CHARS} characters"
                )
    return schema


def _check_schema(text: str, name: str) -> None:
    try:
        check_json_schema(text)
    except InvalidRequestError as err:
        raise InvalidArgumentError(name, err.description) from err


def _parameters(tool: generation_pb2.Tool) -> dict[str, Any]:
    if not tool.parameters:
        return dict(_ANY_OBJECT)
    schema = json.loads(tool.parameters)
    assert isinstance(schema, dict)  # validate_tools checked it is an object
    return schema


def tool_schema(request: generation_pb2.GenerateRequest) -> str:
    """The JSON schema the output must follow (compact JSON), as vLLM's
    server builds it: a named function's parameters; for REQUIRED, an array
    of calls, each one of the tools, with the tools' `$defs` lifted to the
    top so their references still resolve."""
    if request.tool_choice.WhichOneof("choice") == "function":
        (tool,) = (t for t in request.tools if t.name == request.tool_choice.function)
        return json.dumps(_parameters(tool), separators=(",", ":"))
    defs: dict[str, Any] = {}
    variants = []
    for i, tool in enumerate(request.tools):
        parameters = _parameters(tool)
        lifted = parameters.pop("$defs", {})
        if not isinstance(lifted, dict):
            raise InvalidArgumentError(f"tools[{i}].parameters", "$defs must be an object")
        for key, value in lifted.items():
            if defs.setdefault(key, value) != value:
                raise InvalidArgumentError(
                    f"tools[{i}].parameters", f"$defs.{key} differs from another tool's"
                )
        variants.append(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [tool.name]},
                    "parameters": parameters,
                },
                "required": ["name", "parameters"],
            }
        )
    items: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        items["maxItems"] = 1
    if defs:
        items["$defs"] = defs
    return json.dumps(items, separators=(",", ":"))


def schema_field(request: generation_pb2.GenerateRequest) -> str:
    """The field to name when the grammar backend refuses `tool_schema`."""
    if request.tool_choice.WhichOneof("choice") == "function":
        names = [t.name for t in request.tools]
        return f"tools[{names.index(request.tool_choice.function)}].parameters"
    return "tools"


def call_id() -> str:
    # OpenAI's shape: "call_" and 24 characters.
    return f"call_{secrets.token_hex(12)}"


# Between tokens of JSON; a scalar value ends at these (or at , } ]).
_SPACE = frozenset(" \t\r\n")


@dataclass
class _Call:
    """One call of REQUIRED's array, as far as its text has come."""

    index: int
    id: str = field(default_factory=lambda: call_id())
    name: str | None = None
    arguments: list[str] = field(default_factory=list)
    # Characters of `arguments` already sent; -1 until the call is announced.
    sent: int = -1


class _CallsScanner:
    """Reads REQUIRED's array of {"name": ..., "parameters": {...}} objects
    one character at a time as the guided output grows, so each call can be
    sent as soon as its name is whole and its arguments as they are written.

    The arguments are the model's own text of the `parameters` value, not a
    re-serialised parse: the pieces sent then concatenate to exactly the
    whole, which re-serialising a partial parse (partial-json-parser, as
    vLLM does) cannot promise (a number still growing, a string closed off).
    The grammar guarantees the shape; on text it does not expect (a cut),
    the scanner simply stops finding calls."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self._depth = 0  # containers open (outside strings)
        self._in_string = False
        self._escaped = False
        self._key: list[str] | None = None  # a key at depth 2, being read
        self._last_key = ""
        self._expect_value = False
        # The depth-2 value being read: whose key, and what kind.
        self._value_key: str | None = None
        self._value_kind = ""
        self._name: list[str] = []

    def feed(self, text: str) -> list[generation_pb2.ToolCall]:
        for ch in text:
            self._char(ch)
        return self._pieces()

    def _pieces(self) -> list[generation_pb2.ToolCall]:
        pieces = []
        for call in self.calls:
            if call.name is None:
                continue
            arguments = "".join(call.arguments)
            if call.sent < 0:
                pieces.append(
                    generation_pb2.ToolCall(
                        index=call.index, id=call.id, name=call.name, arguments=arguments
                    )
                )
            elif len(arguments) > call.sent:
                pieces.append(
                    generation_pb2.ToolCall(index=call.index, arguments=arguments[call.sent :])
                )
            call.sent = len(arguments)
        return pieces

    def _char(self, ch: str) -> None:
        if self._value_key is not None:
            if self._value_kind == "scalar" and (ch in _SPACE or ch in ",}]"):
                self._end_value()
            else:
                self._in_value(ch)
                return
        if self._key is not None:
            self._key.append(ch)
            if self._string_closes(ch):
                self._last_key = _string("".join(self._key)) or ""
                self._key = None
            return
        if ch in _SPACE:
            return
        if self._depth == 0 and ch == "[":
            self._depth = 1
        elif self._depth == 1 and ch == "{":
            self._depth = 2
            self.calls.append(_Call(index=len(self.calls)))
        elif self._depth == 1 and ch == "]":
            self._depth = 0
        elif self._depth == 2:
            if self._expect_value:
                self._start_value(ch)
            elif ch == '"':
                self._key = [ch]
            elif ch == ":":
                self._expect_value = True
            elif ch == "}":
                self._depth = 1

    def _string_closes(self, ch: str) -> bool:
        """Whether `ch`, read inside a string, is its closing quote."""
        if self._escaped:
            self._escaped = False
        elif ch == "\\":
            self._escaped = True
        elif ch == '"':
            return True
        return False

    def _start_value(self, ch: str) -> None:
        self._expect_value = False
        self._value_key = self._last_key
        self._name = []
        if ch in "{[":
            self._value_kind = "container"
            self._depth += 1
        elif ch == '"':
            self._value_kind = "string"
            self._in_string = True
        else:
            self._value_kind = "scalar"
        self._take(ch)

    def _in_value(self, ch: str) -> None:
        self._take(ch)
        if self._in_string:
            if self._string_closes(ch):
                self._in_string = False
                if self._value_kind == "string":
                    self._end_value()
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 2:
                self._end_value()

    def _take(self, ch: str) -> None:
        if self._value_key == "parameters":
            self.calls[-1].arguments.append(ch)
        elif self._value_key == "name":
            self._name.append(ch)

    def _end_value(self) -> None:
        if self._value_key == "name" and self._value_kind == "string":
            self.calls[-1].name = _string("".join(self._name))
        self._value_key = None


def _string(token: str) -> str | None:
    """A JSON string token's value; None for one the grammar would not write."""
    try:
        value = json.loads(token)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


@dataclass
class _Choice:
    started: bool = False
    text: list[str] = field(default_factory=list)
    scanner: _CallsScanner = field(default_factory=_CallsScanner)


class ToolCallStream:
    """Turns one request's chunks into tool-call chunks when its tool choice
    constrains the output. A named function's arguments stream as they come.
    REQUIRED's calls stream as vLLM's server sends them: a call's first piece
    (its index, id and name) as soon as its name is whole, then its
    arguments as they are written. Text that never made a call (cut short
    before the first name was whole) is returned as it is on the last chunk."""

    def __init__(self, request: generation_pb2.GenerateRequest) -> None:
        self._active = constrains(request)
        which = request.tool_choice.WhichOneof("choice")
        self._named = request.tool_choice.function if which == "function" else None
        self._choices: dict[int, _Choice] = {}

    def convert(self, chunk: generation_pb2.GenerateResponse) -> generation_pb2.GenerateResponse:
        if not self._active:
            return chunk
        choice = self._choices.setdefault(chunk.index, _Choice())
        out = generation_pb2.GenerateResponse()
        out.CopyFrom(chunk)
        out.text = ""
        finished = chunk.finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED
        if self._named is not None:
            if chunk.text or finished:
                call = out.tool_calls.add(index=0, arguments=chunk.text)
                if not choice.started:
                    choice.started = True
                    call.id, call.name = call_id(), self._named
        else:
            choice.text.append(chunk.text)
            out.tool_calls.extend(choice.scanner.feed(chunk.text))
            if finished and not any(c.sent >= 0 for c in choice.scanner.calls):
                # Cut short (max_tokens) before any call was named: no calls
                # can be read, so the text is returned as it is.
                out.text = "".join(choice.text)
                return out
        if chunk.finish_reason == generation_pb2.FINISH_REASON_STOP:
            out.finish_reason = generation_pb2.FINISH_REASON_TOOL_CALLS
        return out
