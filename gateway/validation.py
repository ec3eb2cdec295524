"""Checks on public requests, before anything downstream runs. The bounds
are the mesh's (services/common/generation_limits.py) and the sampling rules
the inference service's own (one definition); limits that need the model
(context length) are checked in `GatewayCore` against the router's model list,
and again by the replica once it has tokenized."""

from __future__ import annotations

from gateway.tool_calls import validate_tools
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError
from services.common.generation_limits import (
    MAX_MESSAGES,
    MAX_MODEL_NAME_BYTES,
    MAX_PROMPT_BYTES,
    MAX_PROMPT_TOKEN_IDS,
)
from services.inference.convert import input_from_proto, model_info_from_proto, sampling_from_proto
from services.inference.engine import InvalidRequestError, check_prompt_size, check_sampling

ROLES = frozenset({"system", "user", "assistant", "tool"})


def validate_input(
    request: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
) -> None:
    if not request.model:
        raise InvalidArgumentError("model", "required")
    if len(request.model.encode()) > MAX_MODEL_NAME_BYTES:
        raise InvalidArgumentError("model", f"is over {MAX_MODEL_NAME_BYTES} bytes")
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidArgumentError(
            "prompt", "one of prompt, messages or prompt_token_ids is required"
        )
    if which == "prompt":
        if not request.prompt:
            raise InvalidArgumentError("prompt", "must not be empty")
        if len(request.prompt.encode()) > MAX_PROMPT_BYTES:
            raise InvalidArgumentError("prompt", f"is over {MAX_PROMPT_BYTES} bytes")
    if which == "prompt_token_ids":
        ids = request.prompt_token_ids.ids
        if not ids:
            raise InvalidArgumentError("prompt_token_ids", "must not be empty")
        if len(ids) > MAX_PROMPT_TOKEN_IDS:
            raise InvalidArgumentError("prompt_token_ids", f"at most {MAX_PROMPT_TOKEN_IDS} ids")
    if which == "messages":
        turns = request.messages.messages
        if not turns:
            raise InvalidArgumentError("messages", "must hold at least one message")
        if len(turns) > MAX_MESSAGES:
            raise InvalidArgumentError("messages", f"at most {MAX_MESSAGES} messages")
        for i, turn in enumerate(turns):
            if turn.role not in ROLES:
                raise InvalidArgumentError(
                    f"messages[{i}].role", f"must be one of {', '.join(sorted(ROLES))}"
                )
        if prompt_bytes(request) > MAX_PROMPT_BYTES:
            raise InvalidArgumentError(
                "messages", f"hold over {MAX_PROMPT_BYTES} bytes of content together"
            )


def validate_generate(request: generation_pb2.GenerateRequest) -> str | None:
    """Checks that need no model; returns the tools' schema when they
    constrain the output (see `validate_tools`)."""
    validate_input(request)
    try:
        check_sampling(sampling_from_proto(request))
    except InvalidRequestError as err:
        raise InvalidArgumentError(err.field, err.description) from err
    return validate_tools(request)


def prompt_bytes(
    request: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
) -> int:
    """The prompt's text in UTF-8 bytes (messages: their content together)."""
    which = request.WhichOneof("input")
    if which == "messages":
        # Tool calls in the history are rendered into the prompt too.
        return sum(
            len(m.content.encode())
            + sum(len(c.arguments.encode()) + len(c.name.encode()) for c in m.tool_calls)
            for m in request.messages.messages
        )
    if which == "prompt":
        return len(request.prompt.encode())
    return 0


def check_against_model(
    request: generation_pb2.GenerateRequest, model: generation_pb2.ModelInfo
) -> None:
    """What the model's context rules out before tokenizing: a completion
    that cannot fit even after a one-token prompt, a prompt whose bytes
    alone are more tokens than the context, and token ids that cannot fit
    with the completion. The replica checks the tokenized prompt again."""
    context = model.max_context_length
    if not context:
        return
    # At least one token of the context is the prompt's.
    room = context - 1
    if request.HasField("max_tokens") and request.max_tokens > room:
        raise InvalidArgumentError(
            "max_tokens",
            f"{request.max_tokens} is past the model's context of {context} tokens"
            f" (at most {room}, with a prompt of one token)",
        )
    if request.HasField("min_tokens") and request.min_tokens > room:
        raise InvalidArgumentError("min_tokens", f"is past the model's context of {context}")
    try:
        check_prompt_size(input_from_proto(request), model_info_from_proto(model))
    except InvalidRequestError as err:
        raise InvalidArgumentError(err.field, err.description) from err
    if request.WhichOneof("input") == "prompt_token_ids":
        count = len(request.prompt_token_ids.ids)
        if count >= context:
            raise InvalidArgumentError(
                "prompt_token_ids",
                f"is {count} tokens; the model's context is {context}"
                " and at least one token must be left to generate",
            )
        if request.HasField("max_tokens") and count + request.max_tokens > context:
            raise InvalidArgumentError(
                "max_tokens",
                f"{request.max_tokens} plus the prompt's {count} tokens is past the"
                f" model's context of {context}",
            )
