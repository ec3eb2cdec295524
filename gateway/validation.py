"""Checks on public requests, before anything downstream runs. The sampling
rules are the inference service's own (one definition); limits that need the
model (context length, vocabulary) are checked by the replica."""

from __future__ import annotations

from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError
from services.inference.convert import sampling_from_proto
from services.inference.engine import InvalidRequestError, check_sampling

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 256


def validate_input(
    request: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
) -> None:
    if not request.model:
        raise InvalidArgumentError("model", "required")
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidArgumentError(
            "prompt", "one of prompt, messages or prompt_token_ids is required"
        )
    if which == "prompt" and not request.prompt:
        raise InvalidArgumentError("prompt", "must not be empty")
    if which == "prompt_token_ids" and not request.prompt_token_ids.ids:
        raise InvalidArgumentError("prompt_token_ids", "must not be empty")
    if which == "messages":
        turns = request.messages.messages
        if not turns:
            raise InvalidArgumentError("messages", "must hold at least one message")
        for i, turn in enumerate(turns):
            if turn.role not in ROLES:
                raise InvalidArgumentError(
                    f"messages[{i}].role", f"must be one of {', '.join(sorted(ROLES))}"
                )


def validate_generate(request: generation_pb2.GenerateRequest) -> None:
    validate_input(request)
    try:
        check_sampling(sampling_from_proto(request))
    except InvalidRequestError as err:
        raise InvalidArgumentError(err.field, err.description) from err
    if len(request.stop) > MAX_STOP_STRINGS:
        raise InvalidArgumentError("stop", f"at most {MAX_STOP_STRINGS} stop strings")
    for i, stop in enumerate(request.stop):
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgumentError(f"stop[{i}]", f"must be 1 to {MAX_STOP_LENGTH} characters")
