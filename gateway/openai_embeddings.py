"""`/v1/embeddings`: OpenAI's embeddings endpoint over `GatewayCore.embed`
(the same auth, quota, routing and billing as the gRPC Embed)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse

from gateway.core import GatewayCore
from gateway.openai_errors import openai_error
from gateway.openai_protocol import UInt32, _Lenient
from maas.v1 import embedding_pb2
from services.common.errors import MeshError

# The core names `inputs[i]`; OpenAI's parameter is `input`.
PARAMS = {"inputs": "input"}


class EmbeddingsRequest(_Lenient):
    model: str
    # One text, texts, one token id list, or token id lists (OpenAI's four shapes).
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: UInt32 | None = None
    user: str | None = None


def embed_request(body: EmbeddingsRequest) -> embedding_pb2.EmbedRequest:
    request = embedding_pb2.EmbedRequest(model=body.model)
    if body.dimensions is not None:
        request.dimensions = body.dimensions
    raw = body.input
    items: list[str] | list[list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [[x for x in raw if isinstance(x, int)]]
    else:
        items = raw  # type: ignore[assignment]  # list[str] or list[list[int]], by the union
    for item in items:
        if isinstance(item, str):
            request.inputs.add(text=item)
        else:
            request.inputs.add().token_ids.ids.extend(item)
    return request


def encode_vector(values: Any, encoding_format: str) -> list[float] | str:
    """Floats, or OpenAI's base64: the vector as little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)


def embeddings_body(response: embedding_pb2.EmbedResponse, encoding_format: str) -> dict[str, Any]:
    return {
        "object": "list",
        "model": response.model,
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(embedding.values, encoding_format),
            }
            for index, embedding in enumerate(response.embeddings)
        ],
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "total_tokens": response.usage.prompt_tokens,
        },
    }


def embeddings_route(
    core: GatewayCore, caller_of: Callable[[Request], Any]
) -> Callable[[EmbeddingsRequest, Request], Coroutine[Any, Any, JSONResponse]]:
    async def embeddings(body: EmbeddingsRequest, request: Request) -> JSONResponse:
        try:
            response = await core.embed(caller_of(request), embed_request(body))
        except MeshError as err:
            error = openai_error(err, PARAMS)
            return JSONResponse(error.body, status_code=error.status, headers=error.headers)
        return JSONResponse(embeddings_body(response, body.encoding_format))

    return embeddings
