"""The engine interface the inference servicer depends on, and the request
checks that need only the model's limits. No vLLM import here."""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationInput:
    """A raw prompt or chat turns; exactly one is used."""

    prompt: str | None = None
    messages: tuple[ChatTurn, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Delta:
    """New output of one request since the last delta."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # so far, this delta included
    finish_reason: FinishReason | None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    max_context_length: int
    vocab_size: int


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    running: int
    waiting: int
    kv_cache_usage: float


class InvalidRequestError(Exception):
    """The model cannot take this request; `field` names the culprit."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class EngineDeadError(Exception):
    """The engine stopped and cannot serve."""


class Engine(Protocol):
    @property
    def model_info(self) -> ModelInfo: ...

    def generate(
        self, request_id: str, inp: GenerationInput, options: SamplingOptions
    ) -> AsyncGenerator[Delta, None]:
        """Streams deltas; closing or cancelling the stream aborts the request."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def count_tokens(self, inp: GenerationInput) -> int: ...

    def load(self) -> LoadSnapshot: ...

    def num_unfinished_requests(self) -> int: ...

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine cannot serve."""
        ...


def check_request(
    prompt_tokens: int, inp: GenerationInput, options: SamplingOptions, model: ModelInfo
) -> int:
    """Validates a tokenized request against the model; returns the max tokens
    to generate (what is asked, or what is left of the context)."""
    input_field = "messages" if inp.messages else "prompt"
    if prompt_tokens == 0:
        raise InvalidRequestError(input_field, "must not be empty")
    if prompt_tokens >= model.max_context_length:
        raise InvalidRequestError(
            input_field,
            f"is {prompt_tokens} tokens; the model's context is {model.max_context_length}"
            " and at least one token must be left to generate",
        )
    room = model.max_context_length - prompt_tokens
    if options.max_tokens is not None:
        if options.max_tokens < 1:
            raise InvalidRequestError("max_tokens", "must be at least 1")
        if options.max_tokens > room:
            raise InvalidRequestError(
                "max_tokens",
                f"{options.max_tokens} plus the prompt's {prompt_tokens} tokens is past the"
                f" model's context of {model.max_context_length}",
            )
    if not options.temperature >= 0.0:
        raise InvalidRequestError("temperature", "must be at least 0")
    if not 0.0 < options.top_p <= 1.0:
        raise InvalidRequestError("top_p", "must be in (0, 1]")
    return options.max_tokens if options.max_tokens is not None else room
