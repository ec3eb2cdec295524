"""Protobuf <-> engine domain objects for the inference service."""

from __future__ import annotations

from typing import Protocol

from maas.v1 import generation_pb2, inference_pb2
from services.inference.engine import (
    Capacity,
    ChatTurn,
    Delta,
    FinishReason,
    GenerationInput,
    ModelCard,
    ModelInfo,
    ModelKind,
    SamplingOptions,
    TokenLogprob,
    ToolCallTurn,
    ToolSpec,
)

_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: generation_pb2.FINISH_REASON_ABORT,
}


def input_from_proto(
    message: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
) -> GenerationInput:
    which = message.WhichOneof("input")
    if which == "messages":
        turns = tuple(
            ChatTurn(
                m.role,
                m.content,
                tuple(ToolCallTurn(c.id, c.name, c.arguments) for c in m.tool_calls),
                m.tool_call_id,
            )
            for m in message.messages.messages
        )
        tools: tuple[ToolSpec, ...] = ()
        if isinstance(message, generation_pb2.GenerateRequest):
            tools = tuple(ToolSpec(t.name, t.description, t.parameters) for t in message.tools)
        return GenerationInput(messages=turns, tools=tools)
    if which == "prompt_token_ids":
        return GenerationInput(token_ids=tuple(message.prompt_token_ids.ids))
    return GenerationInput(prompt=message.prompt)


def sampling_from_proto(request: generation_pb2.GenerateRequest) -> SamplingOptions:
    def opt(name: str, default: float) -> float:
        return getattr(request, name) if request.HasField(name) else default

    constraint = request.WhichOneof("constraint")
    return SamplingOptions(
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=opt("temperature", 1.0),
        top_p=opt("top_p", 1.0),
        top_k=request.top_k,
        min_p=opt("min_p", 0.0),
        presence_penalty=opt("presence_penalty", 0.0),
        frequency_penalty=opt("frequency_penalty", 0.0),
        repetition_penalty=opt("repetition_penalty", 1.0),
        min_tokens=request.min_tokens,
        seed=request.seed if request.HasField("seed") else None,
        stop=tuple(request.stop),
        stop_token_ids=tuple(request.stop_token_ids),
        ignore_eos=request.ignore_eos,
        n=request.n if request.HasField("n") else 1,
        logprobs=request.logprobs if request.HasField("logprobs") else None,
        json_schema=request.json_schema if constraint == "json_schema" else None,
        regex=request.regex if constraint == "regex" else None,
    )


def delta_to_proto(delta: Delta) -> generation_pb2.GenerateResponse:
    message = generation_pb2.GenerateResponse(
        text=delta.text,
        token_ids=delta.token_ids,
        index=delta.index,
        usage=generation_pb2.Usage(
            prompt_tokens=delta.prompt_tokens,
            completion_tokens=delta.completion_tokens,
            cached_tokens=delta.cached_tokens,
        ),
        queued_s=delta.queued_s,
    )
    if delta.finish_reason is not None:
        message.finish_reason = _FINISH_REASONS[delta.finish_reason]
    for entry in delta.logprobs:
        message.logprobs.add(
            sampled=_token_logprob(entry.sampled),
            top=[_token_logprob(t) for t in entry.top],
        )
    return message


def _token_logprob(entry: TokenLogprob) -> generation_pb2.TokenLogprob:
    message = generation_pb2.TokenLogprob(token_id=entry.token_id, logprob=entry.logprob)
    if entry.text is not None:
        message.text = entry.text
    return message


_MODEL_KINDS = {
    ModelKind.CHAT: generation_pb2.MODEL_KIND_CHAT,
    ModelKind.COMPLETION: generation_pb2.MODEL_KIND_COMPLETION,
    ModelKind.EMBEDDING: generation_pb2.MODEL_KIND_EMBEDDING,
}
_KINDS_OF_PROTO = {value: kind for kind, value in _MODEL_KINDS.items()}


def model_info_to_proto(info: ModelInfo, card: ModelCard | None = None) -> generation_pb2.ModelInfo:
    card = card or ModelCard()
    return generation_pb2.ModelInfo(
        name=info.name,
        max_context_length=info.max_context_length,
        vocab_size=info.vocab_size,
        max_token_bytes=info.max_token_bytes,
        kind=_MODEL_KINDS[info.kind],
        owner=card.owner,
        description=card.description,
    )


def model_info_from_proto(info: generation_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=info.name,
        max_context_length=info.max_context_length,
        vocab_size=info.vocab_size,
        max_token_bytes=info.max_token_bytes,
        # A replica that predates kinds served text generation with chat.
        kind=_KINDS_OF_PROTO.get(info.kind, ModelKind.CHAT),
    )


def replica_info_to_proto(
    info: ModelInfo,
    capacity: Capacity,
    adapters: tuple[str, ...],
    card: ModelCard | None = None,
    adapter_slots: int = 0,
) -> inference_pb2.ReplicaInfo:
    model = model_info_to_proto(info, card)
    model.adapters.extend(adapters)
    return inference_pb2.ReplicaInfo(
        model=model,
        max_num_seqs=capacity.max_num_seqs,
        kv_cache_tokens=capacity.kv_cache_tokens,
        adapters=adapters,
        adapter_slots=adapter_slots,
    )


class LoadValues(Protocol):
    """A load report's values: the engine's `LoadSnapshot`, or the router's
    copy of what a replica last reported."""

    @property
    def running(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def kv_cache_usage(self) -> float: ...
    @property
    def tokens_in_flight(self) -> int: ...
    @property
    def prefix_cache_hit_rate(self) -> float: ...
    @property
    def loaded_adapters(self) -> tuple[str, ...]: ...
    @property
    def adapter_loads(self) -> int: ...


def load_to_proto(load: LoadValues) -> inference_pb2.Load:
    return inference_pb2.Load(
        running=load.running,
        waiting=load.waiting,
        kv_cache_usage=load.kv_cache_usage,
        tokens_in_flight=load.tokens_in_flight,
        prefix_cache_hit_rate=load.prefix_cache_hit_rate,
        loaded_adapters=load.loaded_adapters,
        adapter_loads=load.adapter_loads,
    )
