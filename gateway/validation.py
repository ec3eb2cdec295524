"""Checks on public requests, before anything downstream runs. Limits that
need the model (context length) are checked by the inference replica."""

from __future__ import annotations

from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError

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
        raise InvalidArgumentError("prompt", "one of prompt or messages is required")
    if which == "prompt" and not request.prompt:
        raise InvalidArgumentError("prompt", "must not be empty")
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
    if request.HasField("max_tokens") and request.max_tokens < 1:
        raise InvalidArgumentError("max_tokens", "must be at least 1")
    # Written as `not (in range)` so NaN, which compares false to everything, is rejected.
    if request.HasField("temperature") and not (0.0 <= request.temperature <= 2.0):
        raise InvalidArgumentError("temperature", "must be between 0 and 2")
    if request.HasField("top_p") and not (0.0 < request.top_p <= 1.0):
        raise InvalidArgumentError("top_p", "must be in (0, 1]")
    if len(request.stop) > MAX_STOP_STRINGS:
        raise InvalidArgumentError("stop", f"at most {MAX_STOP_STRINGS} stop strings")
    for i, stop in enumerate(request.stop):
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgumentError(f"stop[{i}]", f"must be 1 to {MAX_STOP_LENGTH} characters")
