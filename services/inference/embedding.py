"""Embedding requests as the engine sees them, their checks against the
model's limits, and the interface of an engine that embeds. No vLLM import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from services.common.embedding_limits import MAX_EMBED_INPUTS
from services.inference.engine import InvalidRequestError, ModelInfo


@dataclass(frozen=True, slots=True)
class EmbedInput:
    """Text or token ids; exactly one is set."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int  # of all inputs together


def input_field(index: int) -> str:
    return f"inputs[{index}]"


def check_batch(inputs: Sequence[EmbedInput], dimensions: int | None) -> None:
    """Checks that need no tokenizer."""
    if not 1 <= len(inputs) <= MAX_EMBED_INPUTS:
        raise InvalidRequestError("inputs", f"must hold 1 to {MAX_EMBED_INPUTS} inputs")
    if dimensions is not None and dimensions < 1:
        raise InvalidRequestError("dimensions", "must be at least 1")


def check_input_size(index: int, inp: EmbedInput, model: ModelInfo) -> None:
    """Refuses, before tokenizing, text whose bytes alone cannot fit the
    context (each token covers at most `max_token_bytes` of them)."""
    if inp.text is None or model.max_token_bytes <= 0:
        return
    size = len(inp.text.encode())
    at_least = -(-size // model.max_token_bytes)
    if at_least > model.max_context_length:
        raise InvalidRequestError(
            input_field(index),
            f"is {size} bytes, at least {at_least} tokens; the model's context is"
            f" {model.max_context_length}",
        )


def check_tokens(index: int, ids: Sequence[int], from_ids: bool, model: ModelInfo) -> None:
    field = input_field(index)
    if not ids:
        raise InvalidRequestError(field, "must not be empty")
    if from_ids and not all(0 <= t < model.vocab_size for t in ids):
        raise InvalidRequestError(
            field, f"token ids must be below the vocabulary size {model.vocab_size}"
        )
    if len(ids) > model.max_context_length:
        raise InvalidRequestError(
            field, f"is {len(ids)} tokens; the model's context is {model.max_context_length}"
        )


@runtime_checkable
class Embedder(Protocol):
    """An engine that can serve embeddings (when its model is an embedding model)."""

    async def embed(
        self, request_id: str, inputs: Sequence[EmbedInput], dimensions: int | None = None
    ) -> Embeddings:
        """One normalized vector per input. Raises InvalidRequestError naming
        `model` when the engine serves a generation model. Cancelling aborts
        every input in the engine."""
        ...
