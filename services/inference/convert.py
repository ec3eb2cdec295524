"""Protobuf <-> engine domain objects for the inference service."""

from __future__ import annotations

from maas.v1 import generation_pb2
from services.inference.engine import (
    ChatTurn,
    Delta,
    FinishReason,
    GenerationInput,
    ModelInfo,
    SamplingOptions,
)

_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: generation_pb2.FINISH_REASON_ABORT,
}


def input_from_proto(
    message: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
) -> GenerationInput:
    if message.WhichOneof("input") == "messages":
        turns = tuple(ChatTurn(m.role, m.content) for m in message.messages.messages)
        return GenerationInput(messages=turns)
    return GenerationInput(prompt=message.prompt)


def sampling_from_proto(request: generation_pb2.GenerateRequest) -> SamplingOptions:
    return SamplingOptions(
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else 1.0,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
    )


def delta_to_proto(delta: Delta) -> generation_pb2.GenerateResponse:
    return generation_pb2.GenerateResponse(
        text=delta.text,
        token_ids=delta.token_ids,
        finish_reason=_FINISH_REASONS[delta.finish_reason]
        if delta.finish_reason is not None
        else generation_pb2.FINISH_REASON_UNSPECIFIED,
        usage=generation_pb2.Usage(
            prompt_tokens=delta.prompt_tokens, completion_tokens=delta.completion_tokens
        ),
    )


def model_info_to_proto(info: ModelInfo) -> generation_pb2.ModelInfo:
    return generation_pb2.ModelInfo(
        name=info.name, max_context_length=info.max_context_length, vocab_size=info.vocab_size
    )
