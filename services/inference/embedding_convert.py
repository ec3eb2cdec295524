"""Embedding protobufs to and from the engine's embedding types."""

from __future__ import annotations

from maas.v1 import embedding_pb2, generation_pb2
from services.inference.embedding import Embeddings, EmbedInput


def inputs_from_proto(request: embedding_pb2.EmbedRequest) -> tuple[EmbedInput, ...]:
    return tuple(
        EmbedInput(token_ids=tuple(inp.token_ids.ids))
        if inp.WhichOneof("input") == "token_ids"
        else EmbedInput(text=inp.text)
        for inp in request.inputs
    )


def embeddings_to_proto(model: str, result: Embeddings) -> embedding_pb2.EmbedResponse:
    return embedding_pb2.EmbedResponse(
        model=model,
        embeddings=[embedding_pb2.Embedding(values=vector) for vector in result.vectors],
        usage=generation_pb2.Usage(prompt_tokens=result.prompt_tokens),
    )
