"""The bounds and defaults of a generation request, for every hop.

The gateway checks them before a request costs anything (no quota reserved,
no router, no tokenizer); the inference service checks the same ones again
for callers inside the mesh. Each bound is generous for honest use and small
enough that checking it is cheap."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgumentError

# Completion tokens a request that sets no max_tokens may generate: the room
# left in the context, up to this. One rule for the gateway's quota estimate,
# the router's cost and the engine's limit, so a reservation covers the run.
DEFAULT_MAX_TOKENS = 1024

# Hub names ("org/model") run to ~100 characters; adapter names are shorter.
MAX_MODEL_NAME_BYTES = 256
# vLLM checks every stop string against each new piece of text: cost grows with both.
MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 256
# A handful of end-of-turn tokens is the honest use; the engine scans them per token.
MAX_STOP_TOKEN_IDS = 64
# Regex and JSON schema: grammar conversion grows steeply with size and nesting.
# 64 KiB holds any schema a person writes; 32 levels is over three times
# OpenAI's 10 and half vLLM's own cap of 64.
MAX_CONSTRAINT_BYTES = 64 * 1024
MAX_CONSTRAINT_DEPTH = 32
# A tenant's private adapter, by id (auth issues "ad-" and 24 hex digits):
# a replica names its cache directory after it, so no path separators and
# no leading dot, and a bounded length.
MAX_ADAPTER_ID_BYTES = 128
_ADAPTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Chat turns in one request; long agent transcripts stay well below.
MAX_MESSAGES = 2048
# Prompt text (or all messages' content together), in UTF-8 bytes. 4 MiB is
# about a million tokens: past the context of any model served today.
MAX_PROMPT_BYTES = 4 * 1024 * 1024
# Token ids in prompt_token_ids, when the model's context is not known yet.
MAX_PROMPT_TOKEN_IDS = 1024 * 1024

# A public gRPC message: the largest prompt plus room for the other fields
# (messages' roles, constraints, stops), far below the mesh's internal 16 MiB.
MAX_PUBLIC_MESSAGE_BYTES = MAX_PROMPT_BYTES + 1024 * 1024
# gRPC metadata on the public port: a key, a request id and trace headers
# need under 1 KiB; 16 KiB is gRPC's own hard default.
MAX_PUBLIC_METADATA_BYTES = 16 * 1024
# An HTTP body: the largest prompt, JSON-escaped (non-ASCII text doubles at
# most in \\u escapes of UTF-8's 2-to-3-byte characters), plus the rest.
MAX_HTTP_BODY_BYTES = 2 * MAX_PROMPT_BYTES + 1024 * 1024

# An HTTP request's line and headers: a key, a request id and trace headers
# need under 1 KiB; the same bound as gRPC metadata.
MAX_HTTP_HEAD_BYTES = MAX_PUBLIC_METADATA_BYTES


def completion_limit(max_tokens: int | None, room: int | None) -> int:
    """Tokens a choice may generate: `max_tokens` when set, else the default
    rule. `room`: context tokens left after the prompt (None: not known here,
    which makes this an upper bound of what the engine will allow)."""
    if max_tokens is not None:
        return max_tokens
    if room is None:
        return DEFAULT_MAX_TOKENS
    return max(1, min(DEFAULT_MAX_TOKENS, room))


def check_adapter_id(adapter_id: str) -> None:
    """INVALID_ARGUMENT naming `adapter_id` unless it is "" (the base model)
    or an id a registry could have issued."""
    if not adapter_id:
        return
    if len(adapter_id) > MAX_ADAPTER_ID_BYTES:
        raise InvalidArgumentError(
            "adapter_id", f"at most {MAX_ADAPTER_ID_BYTES} characters, got {len(adapter_id)}"
        )
    if not _ADAPTER_ID.fullmatch(adapter_id):
        raise InvalidArgumentError(
            "adapter_id", "letters, digits, '.', '_' and '-' only, starting with a letter or digit"
        )


def json_depth(value: object) -> int:
    """Nesting of objects and arrays; stops counting past the bound."""
    depth = 0
    level: list[object] = [value]
    while level and depth <= MAX_CONSTRAINT_DEPTH:
        children: list[object] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if not any(isinstance(i, dict | list) for i in level):
            break
        depth += 1
        level = children
    return depth


def regex_depth(pattern: str) -> int:
    """Nesting of groups in a regex (escaped and bracketed parentheses aside)."""
    depth = deepest = 0
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(0, depth - 1)
    return deepest
