"""Rebuilding an aio RpcMethodHandler around its behaviour, for server
interceptors that must run code inside the handler's own task; and closing a
call's response streams in that task."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias, cast

import grpc

Behavior = Callable[..., Any]

# A string: grpc's runtime classes are not subscriptable, only its stubs are.
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"
)

# The response streams opened while serving the current call, outermost first;
# a list only inside `written_in_call_task`.
_call_streams: ContextVar[list[AsyncGenerator[Any, None]] | None] = ContextVar(
    "maas_call_streams", default=None
)


def stream_responses(result: Any) -> AsyncGenerator[Any, None]:
    """Streaming handlers come in two styles: async generators, and coroutines
    that write with `context.write` (grpc's own health Watch). Both become an
    async generator here, closed by `written_in_call_task` when the call
    ends. A generator is returned as it is: a layer that only passed each
    response on would cost every message of every stream a hop."""
    responses = cast(
        AsyncGenerator[Any, None], result if inspect.isasyncgen(result) else _responses(result)
    )
    streams = _call_streams.get()
    if streams is not None:
        streams.append(responses)
    return responses


async def _responses(result: Any) -> AsyncGenerator[Any, None]:
    if inspect.isawaitable(result):
        await result
        return
    async for response in result:
        yield response


def written_in_call_task(behavior: Behavior) -> Behavior:
    """A streaming behaviour run as a coroutine that writes each response.

    grpc.aio iterates a generator handler itself and, when the call is
    cancelled while the handler waits at `yield` (a slow reader), drops it
    unclosed: asyncio's finalizer then closes it later in another task, where
    OpenTelemetry cannot detach its context (an ERROR traceback per call) and
    the handler's `finally` runs outside its span. Here the cancellation lands
    in `context.write`, and every stream of the call is closed, innermost first,
    in the call's own task."""

    async def write_responses(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        streams: list[AsyncGenerator[Any, None]] = []
        token = _call_streams.set(streams)
        try:
            async for response in stream_responses(behavior(request, context)):
                await context.write(response)
        finally:
            for stream in reversed(streams):
                await stream.aclose()
            _call_streams.reset(token)

    return write_responses


def unchanged(behavior: Behavior) -> Behavior:
    return behavior


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


class RewrappingServerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that runs its code inside each handler: it wraps
    every handler's behaviour (once per handler) and changes nothing else."""

    def __init__(
        self,
        wrap_unary: Callable[[Behavior], Behavior],
        wrap_stream: Callable[[Behavior], Behavior],
    ) -> None:
        self._rewrap = CachedRewrap(wrap_unary, wrap_stream)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._rewrap(await continuation(handler_call_details))
