"""Checks and the token estimate of an Embed request, before quota is
reserved; the replica checks each input again once it has tokenized it."""

from __future__ import annotations

import math

from gateway.quota import BYTES_PER_TOKEN
from maas.v1 import embedding_pb2, generation_pb2
from services.common.embedding_limits import MAX_EMBED_INPUTS
from services.common.errors import InvalidArgumentError
from services.common.generation_limits import (
    MAX_MODEL_NAME_BYTES,
    MAX_PROMPT_BYTES,
    MAX_PROMPT_TOKEN_IDS,
)


def validate_embed(request: embedding_pb2.EmbedRequest) -> None:
    """Checks that need no model."""
    if not request.model:
        raise InvalidArgumentError("model", "required")
    if len(request.model.encode()) > MAX_MODEL_NAME_BYTES:
        raise InvalidArgumentError("model", f"is over {MAX_MODEL_NAME_BYTES} bytes")
    if not 1 <= len(request.inputs) <= MAX_EMBED_INPUTS:
        raise InvalidArgumentError("inputs", f"must hold 1 to {MAX_EMBED_INPUTS} inputs")
    if request.HasField("dimensions") and request.dimensions < 1:
        raise InvalidArgumentError("dimensions", "must be at least 1")
    for index, inp in enumerate(request.inputs):
        field = f"inputs[{index}]"
        which = inp.WhichOneof("input")
        if which == "token_ids":
            ids = inp.token_ids.ids
            if not ids:
                raise InvalidArgumentError(field, "must not be empty")
            if len(ids) > MAX_PROMPT_TOKEN_IDS:
                raise InvalidArgumentError(field, f"at most {MAX_PROMPT_TOKEN_IDS} ids")
            continue
        if not inp.text:
            raise InvalidArgumentError(field, "must not be empty")
        if len(inp.text.encode()) > MAX_PROMPT_BYTES:
            raise InvalidArgumentError(field, f"is over {MAX_PROMPT_BYTES} bytes")


def check_embed_against_model(
    request: embedding_pb2.EmbedRequest, model: generation_pb2.ModelInfo
) -> None:
    """Inputs that cannot fit the model's context, known before tokenizing."""
    for index, inp in enumerate(request.inputs):
        field = f"inputs[{index}]"
        if inp.WhichOneof("input") == "token_ids":
            if len(inp.token_ids.ids) > model.max_context_length:
                raise InvalidArgumentError(
                    field,
                    f"is {len(inp.token_ids.ids)} tokens; the model's context is"
                    f" {model.max_context_length}",
                )
            continue
        size = len(inp.text.encode())
        if model.max_token_bytes and -(-size // model.max_token_bytes) > model.max_context_length:
            raise InvalidArgumentError(
                field, f"is {size} bytes, more tokens than the model's context of"
                f" {model.max_context_length}",
            )  # fmt: skip


def estimate_embed_tokens(request: embedding_pb2.EmbedRequest) -> int:
    """Input tokens to reserve (over-estimated, as reservations should be)."""
    total = 0
    for inp in request.inputs:
        if inp.WhichOneof("input") == "token_ids":
            total += len(inp.token_ids.ids)
        else:
            total += math.ceil(len(inp.text.encode()) / BYTES_PER_TOKEN)
    return total
