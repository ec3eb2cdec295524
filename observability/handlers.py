"""Rebuilding an aio RpcMethodHandler around its behaviour, for server
interceptors that must run code inside the handler's own task."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]


async def stream_responses(result: Any) -> AsyncIterator[Any]:
    """Streaming handlers come in two styles: async generators, and coroutines
    that write with `context.write` (grpc's own health Watch). Both become an
    async iterator here."""
    if inspect.isawaitable(result):
        await result
        return
    async for response in result:
        yield response


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    wrap_unary: Callable[[Behavior], Behavior],
    wrap_stream: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """The same handler with its behaviour wrapped; serializers are kept."""
    if handler is None:
        return None
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **kwargs)
    return handler


class CachedRewrap:
    """`rewrap` once per handler: servicer handlers live as long as the server,
    so wrapping them again on every call would only cost time."""

    def __init__(
        self,
        wrap_unary: Callable[[Behavior], Behavior],
        wrap_stream: Callable[[Behavior], Behavior],
    ) -> None:
        self._wrap_unary = wrap_unary
        self._wrap_stream = wrap_stream
        self._cache: dict[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]] = {}

    def __call__(
        self, handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler is None:
            return None
        wrapped = self._cache.get(handler)
        if wrapped is None:
            wrapped = rewrap(handler, self._wrap_unary, self._wrap_stream)
            assert wrapped is not None
            self._cache[handler] = wrapped
        return wrapped
