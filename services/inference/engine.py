"""The engine interface the inference servicer depends on, and the request
checks that need only the model's limits. No vLLM import here."""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.generation_limits import (
    MAX_CONSTRAINT_BYTES,
    MAX_CONSTRAINT_DEPTH,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    completion_limit,
    json_depth,
    regex_depth,
)


@dataclass(frozen=True, slots=True)
class ToolCallTurn:
    """A call of a tool in an assistant turn; arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str
    tool_calls: tuple[ToolCallTurn, ...] = ()
    tool_call_id: str = ""

    def as_template_message(self) -> dict[str, object]:
        """The turn as chat templates read it (OpenAI's message shape, with
        arguments as an object, as vLLM's server passes them)."""
        message: dict[str, object] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _json_or_text(call.arguments)},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; parameters as JSON schema text ("": any object)."""

    name: str
    description: str
    parameters: str

    def as_template_tool(self) -> dict[str, object]:
        function: dict[str, object] = {"name": self.name, "description": self.description}
        function["parameters"] = _json_or_text(self.parameters or '{"type":"object"}')
        return {"type": "function", "function": function}


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class GenerationInput:
    """A raw prompt, chat turns or token ids; exactly one is used. Tools go
    into the chat template with the turns (templates that know none ignore them)."""

    prompt: str | None = None
    messages: tuple[ChatTurn, ...] = ()
    token_ids: tuple[int, ...] | None = None
    tools: tuple[ToolSpec, ...] = ()

    @property
    def field(self) -> str:
        """The request field this input came from, for error messages."""
        if self.messages:
            return "messages"
        if self.token_ids is not None:
            return "prompt_token_ids"
        return "prompt"


MAX_CHOICES = 16
MAX_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    max_tokens: int | None = None  # None: generation_limits.completion_limit's default
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    logprobs: int | None = None  # None: no logprobs; k: sampled token and k alternatives
    json_schema: str | None = None
    regex: str | None = None


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    # As the tokenizer decodes the token alone; None when the engine did not decode it.
    text: str | None = None


@dataclass(frozen=True, slots=True)
class SampledLogprob:
    sampled: TokenLogprob
    top: tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class Delta:
    """New output of one choice of a request since its last delta."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # of all choices so far, this delta included
    finish_reason: FinishReason | None
    index: int = 0
    logprobs: tuple[SampledLogprob, ...] = ()
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    queued_s: float = 0.0  # on a request's first delta: its wait in the engine's queue


class ModelKind(enum.Enum):
    """What a model is for, as its engine knows it."""

    CHAT = "chat"  # generates text and has a chat template
    COMPLETION = "completion"  # generates text, no chat template
    EMBEDDING = "embedding"  # a pooling model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    max_context_length: int
    vocab_size: int
    # Most UTF-8 bytes one token stands for (0: unknown): a prompt of B bytes
    # is at least B / this many tokens, known before tokenizing it.
    max_token_bytes: int = 0
    kind: ModelKind = ModelKind.CHAT


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What configuration says of a model, which no engine can know."""

    owner: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class Capacity:
    max_num_seqs: int
    kv_cache_tokens: int


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    running: int
    waiting: int
    kv_cache_usage: float
    tokens_in_flight: int = 0
    prefix_cache_hit_rate: float = 0.0
    # Private adapters loaded now, most recently used first, and how many
    # loads (misses) since the replica started: the adapter slots' record
    # (load_report.py), never an engine's; an engine leaves them empty.
    loaded_adapters: tuple[str, ...] = ()
    adapter_loads: int = 0


class InvalidRequestError(Exception):
    """The model cannot take this request; `field` names the culprit."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class DuplicateRequestError(Exception):
    """A request with this id is live in the engine; two never share one."""


class EngineDeadError(Exception):
    """The engine stopped and cannot serve."""


class Engine(Protocol):
    @property
    def model_info(self) -> ModelInfo: ...

    def generate(
        self,
        request_id: str,
        inp: GenerationInput,
        options: SamplingOptions,
        adapter: str | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[Delta, None]:
        """Streams deltas; closing or cancelling the stream aborts the request.
        `adapter`: a static adapter's name or a loaded private adapter's id.
        Lower `priority` runs first among waiting requests where the engine
        schedules by priority."""
        ...

    @property
    def capacity(self) -> Capacity: ...

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the LoRA adapters served on top of the model."""
        ...

    async def load_adapter(self, adapter_id: str, path: str) -> None:
        """Loads a private adapter (PEFT files in directory `path`); from then
        on `generate(..., adapter=adapter_id)` runs with it. Which adapters
        are loaded, and which goes next, is the adapter slots' to decide and
        record (adapter_slots.py); the engine keeps no order of its own."""
        ...

    async def unload_adapter(self, adapter_id: str) -> None:
        """Unloads a private adapter no running request uses; unknown ids are ignored."""
        ...

    async def abort(self, request_ids: Sequence[str]) -> list[str]:
        """Aborts those of `request_ids` that are running; returns them."""
        ...

    def watch_load(self) -> AsyncGenerator[LoadSnapshot, None]:
        """The current load, then every change."""
        ...

    async def count_tokens(self, inp: GenerationInput) -> int: ...

    def load(self) -> LoadSnapshot: ...

    def num_unfinished_requests(self) -> int: ...

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine cannot serve."""
        ...

    async def wait_dead(self) -> str:
        """Returns, saying why, once the engine has died (on the engine's own
        signal, not by polling); never returns while it lives."""
        ...

    def last_step_at(self) -> float:
        """time.monotonic() of the engine's last step (0.0 before any)."""
        ...


def _require(ok: bool, field: str, description: str) -> None:
    if not ok:
        raise InvalidRequestError(field, description)


# vLLM's _SAMPLING_EPS: a temperature below it means greedy sampling.
GREEDY_BELOW = 1e-5


def check_sampling(options: SamplingOptions) -> None:
    """Checks that need no model. Written as `not (in range)` so NaN fails."""
    _require(0.0 <= options.temperature <= 2.0, "temperature", "must be in [0, 2]")
    _require(0.0 < options.top_p <= 1.0, "top_p", "must be in (0, 1]")
    _require(options.top_k >= 0, "top_k", "must be >= 0")
    _require(0.0 <= options.min_p <= 1.0, "min_p", "must be in [0, 1]")
    _require(-2.0 <= options.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]")
    _require(-2.0 <= options.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]")
    _require(0.0 < options.repetition_penalty <= 2.0, "repetition_penalty", "must be in (0, 2]")
    _require(1 <= options.n <= MAX_CHOICES, "n", f"must be 1 to {MAX_CHOICES}")
    # vLLM samples greedily below this temperature, and then only one choice.
    _require(
        options.n == 1 or options.temperature >= GREEDY_BELOW,
        "n",
        "must be 1 when temperature is 0 (greedy sampling gives one answer)",
    )
    if options.logprobs is not None:
        _require(0 <= options.logprobs <= MAX_LOGPROBS, "logprobs", f"must be 0 to {MAX_LOGPROBS}")
    if options.max_tokens is not None:
        _require(options.max_tokens >= 1, "max_tokens", "must be at least 1")
        _require(options.min_tokens <= options.max_tokens, "min_tokens", "exceeds max_tokens")
    _require(
        len(options.stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} stop strings"
    )
    for i, stop in enumerate(options.stop):
        _require(
            0 < len(stop) <= MAX_STOP_LENGTH,
            f"stop[{i}]",
            f"must be 1 to {MAX_STOP_LENGTH} characters",
        )
    _require(
        len(options.stop_token_ids) <= MAX_STOP_TOKEN_IDS,
        "stop_token_ids",
        f"at most {MAX_STOP_TOKEN_IDS} token ids",
    )
    if options.json_schema is not None:
        check_json_schema(options.json_schema)
    if options.regex is not None:
        check_regex(options.regex)


def check_json_schema(text: str) -> None:
    """Size, syntax and nesting; whether the grammar backend takes it is
    `constraints.compile_check`'s to judge (off the event loop)."""
    _require(
        len(text.encode()) <= MAX_CONSTRAINT_BYTES,
        "json_schema",
        f"is over {MAX_CONSTRAINT_BYTES} bytes",
    )
    try:
        schema = json.loads(text)
    except RecursionError as err:
        raise InvalidRequestError(
            "json_schema", f"nests deeper than {MAX_CONSTRAINT_DEPTH} levels"
        ) from err
    except ValueError as err:
        raise InvalidRequestError("json_schema", f"is not JSON: {err}") from err
    _require(isinstance(schema, dict), "json_schema", "must be a JSON object")
    _require(
        json_depth(schema) <= MAX_CONSTRAINT_DEPTH,
        "json_schema",
        f"nests deeper than {MAX_CONSTRAINT_DEPTH} levels",
    )


def check_regex(pattern: str) -> None:
    """Size and nesting; its syntax is the grammar backend's (Python's `re`
    is another dialect), checked by `constraints.compile_check`."""
    _require(bool(pattern), "regex", "must not be empty")
    _require(
        len(pattern.encode()) <= MAX_CONSTRAINT_BYTES,
        "regex",
        f"is over {MAX_CONSTRAINT_BYTES} bytes",
    )
    # The backend's native converter does not handle NUL (vLLM refuses it too).
    _require("\x00" not in pattern, "regex", "must not contain a NUL character")
    _require(
        regex_depth(pattern) <= MAX_CONSTRAINT_DEPTH,
        "regex",
        f"nests groups deeper than {MAX_CONSTRAINT_DEPTH} levels",
    )


def check_prompt_size(inp: GenerationInput, model: ModelInfo) -> None:
    """Refuses, before tokenizing, a prompt whose bytes alone cannot fit the
    context (each token covers at most `max_token_bytes` of them)."""
    if model.max_token_bytes <= 0 or inp.token_ids is not None:
        return
    if inp.messages:
        size = sum(
            len(turn.content.encode()) + sum(len(c.arguments.encode()) for c in turn.tool_calls)
            for turn in inp.messages
        )
    else:
        size = len((inp.prompt or "").encode())
    at_least = -(-size // model.max_token_bytes)
    _require(
        at_least < model.max_context_length,
        inp.field,
        f"is {size} bytes, at least {at_least} tokens; the model's context is"
        f" {model.max_context_length}",
    )


def check_request(
    prompt_ids: Sequence[int], inp: GenerationInput, options: SamplingOptions, model: ModelInfo
) -> int:
    """Validates a tokenized request against the model; returns the max tokens
    to generate (what is asked, or `completion_limit`'s default)."""
    check_sampling(options)
    prompt_tokens = len(prompt_ids)
    input_field = inp.field
    _require(prompt_tokens > 0, input_field, "must not be empty")
    if inp.token_ids is not None:
        _require(
            all(0 <= t < model.vocab_size for t in prompt_ids),
            input_field,
            f"token ids must be below the vocabulary size {model.vocab_size}",
        )
    for token in options.stop_token_ids:
        _require(0 <= token < model.vocab_size, "stop_token_ids",
                 f"must be below the vocabulary size {model.vocab_size}")  # fmt: skip
    _require(
        prompt_tokens < model.max_context_length,
        input_field,
        f"is {prompt_tokens} tokens; the model's context is {model.max_context_length}"
        " and at least one token must be left to generate",
    )
    room = model.max_context_length - prompt_tokens
    if options.max_tokens is not None:
        _require(
            options.max_tokens <= room,
            "max_tokens",
            f"{options.max_tokens} plus the prompt's {prompt_tokens} tokens is past the"
            f" model's context of {model.max_context_length}",
        )
    _require(options.min_tokens <= room, "min_tokens", "is past the model's context")
    return completion_limit(options.max_tokens, room)
