"""OpenAI request bodies onto `GenerateRequest`, and the generation fields'
names back onto the OpenAI parameters they came from (for errors).

What the proto cannot express is refused with INVALID_ARGUMENT naming the
parameter; nothing a client sends is silently dropped."""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.openai_protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    ResponseFormat,
)
from gateway.openai_tools import apply_tools, history_turn
from maas.v1 import generation_pb2
from services.common.errors import InvalidArgumentError

# OpenAI's newer name for the system role.
_ROLE_ALIASES = {"developer": "system"}

# Generation fields whose OpenAI parameter has another name; others keep theirs.
CHAT_PARAMS: Mapping[str, str] = {
    "prompt": "messages",
    "logprobs": "top_logprobs",
    "json_schema": "response_format",
}
COMPLETION_PARAMS: Mapping[str, str] = {
    "prompt_token_ids": "prompt",
    "json_schema": "response_format",
}


def openai_param(field: str, renames: Mapping[str, str]) -> str:
    """The OpenAI parameter a generation field (`stop[1]`, `messages[0].role`) came from."""
    head, sep, rest = field.partition("[")
    return renames.get(head, head) + sep + rest


def chat_request(body: ChatCompletionRequest) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(model=body.model)
    # Set even when empty, so the core names `messages` rather than a missing input.
    request.messages.SetInParent()
    for i, message in enumerate(body.messages):
        turn = request.messages.messages.add(
            role=_ROLE_ALIASES.get(message.role, message.role), content=_text(message, i)
        )
        history_turn(message, turn)
    if body.max_completion_tokens is not None:
        request.max_tokens = body.max_completion_tokens
    elif body.max_tokens is not None:
        request.max_tokens = body.max_tokens
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidArgumentError("top_logprobs", "needs logprobs: true")
    if body.logprobs:
        request.logprobs = body.top_logprobs or 0
    apply_tools(request, body)
    _sampling(request, body)
    return request


def completion_request(body: CompletionRequest) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(model=body.model)
    prompt = _one_prompt(body.prompt)
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.prompt_token_ids.SetInParent()
        request.prompt_token_ids.ids.extend(prompt)
    if body.max_tokens is not None:
        request.max_tokens = body.max_tokens
    if body.logprobs is not None:
        request.logprobs = body.logprobs
    if body.echo:
        raise InvalidArgumentError("echo", "echoing the prompt is not supported by this server")
    if body.suffix:
        raise InvalidArgumentError("suffix", "is not supported by this server")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidArgumentError("best_of", "must equal n: this server returns every choice")
    _sampling(request, body)
    return request


def _one_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str | list[int]:
    """OpenAI takes a batch of prompts in one request; the mesh takes one."""
    if isinstance(prompt, str):
        return prompt
    if not prompt or isinstance(prompt[0], int):
        return [t for t in prompt if isinstance(t, int)]
    if len(prompt) > 1:
        raise InvalidArgumentError("prompt", "one prompt per request")
    return prompt[0]


def _text(message: ChatMessageIn, index: int) -> str:
    if message.content is None and message.tool_calls:
        # An assistant turn that only called tools.
        return ""
    if message.content is None:
        raise InvalidArgumentError(f"messages[{index}].content", "required")
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise InvalidArgumentError(
                f"messages[{index}].content[{j}]", "only text parts are supported"
            )
        texts.append(part.text)
    return "".join(texts)


def _sampling(
    request: generation_pb2.GenerateRequest, body: ChatCompletionRequest | CompletionRequest
) -> None:
    if body.temperature is not None:
        request.temperature = body.temperature
    if body.top_p is not None:
        request.top_p = body.top_p
    if body.n is not None:
        request.n = body.n
    if body.seed is not None:
        request.seed = body.seed
    if body.stop is not None:
        request.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    if body.presence_penalty is not None:
        request.presence_penalty = body.presence_penalty
    if body.frequency_penalty is not None:
        request.frequency_penalty = body.frequency_penalty
    if body.top_k is not None and body.top_k > 0:
        request.top_k = body.top_k
    if body.min_p is not None:
        request.min_p = body.min_p
    if body.repetition_penalty is not None:
        request.repetition_penalty = body.repetition_penalty
    if body.min_tokens is not None:
        request.min_tokens = body.min_tokens
    if body.stop_token_ids:
        request.stop_token_ids.extend(body.stop_token_ids)
    request.ignore_eos = body.ignore_eos
    if body.logit_bias:
        raise InvalidArgumentError("logit_bias", "is not supported by this server")
    if body.stream_options is not None and not body.stream:
        raise InvalidArgumentError("stream_options", "only allowed when stream is true")
    if body.response_format is not None:
        _constrain(request, body.response_format)


def _constrain(request: generation_pb2.GenerateRequest, response_format: ResponseFormat) -> None:
    if response_format.type == "json_object":
        request.json_schema = '{"type":"object"}'
    elif response_format.type == "json_schema":
        spec = response_format.json_schema
        if spec is None or spec.schema_ is None:
            raise InvalidArgumentError("response_format.json_schema.schema", "required")
        request.json_schema = json.dumps(spec.schema_, separators=(",", ":"))
