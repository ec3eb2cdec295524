"""The request-context interceptors (x-request-id in, x-request-id out) and
the one that keeps a streaming call's clean-up in the call's own task.

The server side wraps the handler itself, so the context is set inside the
task that runs the handler (and every call it makes), not only around
`intercept_service`."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias, TypeVar

import grpc

from observability.context import (
    REQUEST_ID_METADATA_KEY,
    bind_request,
    clear_request,
    current_request_id,
)
from observability.handlers import (
    Behavior,
    CachedRewrap,
    stream_responses,
    unchanged,
    written_in_call_task,
)

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

# A string: grpc's runtime classes are not subscriptable, only its stubs are.
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"
)


class StreamClosingServerInterceptor(grpc.aio.ServerInterceptor):
    """Runs streaming handlers so that a cancelled call closes them in its own
    task (see `written_in_call_task`). Must come first: it only helps the
    layers it wraps."""

    def __init__(self) -> None:
        self._rewrap = CachedRewrap(unchanged, written_in_call_task)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._rewrap(await continuation(handler_call_details))


def _request_id_from(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else value
    return None


def _enter_request(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # The handler's task inherits the context of whoever started the server;
    # nothing bound there belongs to this call.
    clear_request()
    request_id = _request_id_from(context)
    if request_id:
        bind_request(request_id)


class RequestContextServerInterceptor(grpc.aio.ServerInterceptor):
    """Binds the caller's x-request-id for the duration of the handler."""

    def __init__(self) -> None:
        self._rewrap = CachedRewrap(_unary, _stream)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._rewrap(await continuation(handler_call_details))


def _unary(behavior: Behavior) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _enter_request(context)
        try:
            return await behavior(request, context)
        finally:
            clear_request()

    return wrapped


def _stream(behavior: Behavior) -> Behavior:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _enter_request(context)
        try:
            async for response in stream_responses(behavior(request, context)):
                yield response
        finally:
            clear_request()

    return wrapped


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    request_id = current_request_id()
    if request_id is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if metadata.get(REQUEST_ID_METADATA_KEY) is not None:
        return details
    metadata.add(REQUEST_ID_METADATA_KEY, request_id)
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
    )


class RequestContextClientInterceptor:
    """Adds the current request's x-request-id to outgoing calls that do not
    set one. grpc.aio files each interceptor under the first call kind it is,
    so one object cannot serve all four: `for_all_call_kinds` gives one of each."""

    @staticmethod
    def for_all_call_kinds() -> list[grpc.aio.ClientInterceptor]:
        return [
            _RequestIdUnaryUnary(),
            _RequestIdUnaryStream(),
            _RequestIdStreamUnary(),
            _RequestIdStreamStream(),
        ]


class _RequestIdUnaryUnary(RequestContextClientInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, RequestT],
            Awaitable[grpc.aio.UnaryUnaryCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: RequestT,
    ) -> ResponseT | grpc.aio.UnaryUnaryCall[RequestT, ResponseT]:
        return await continuation(_with_request_id(client_call_details), request)


class _RequestIdUnaryStream(RequestContextClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, RequestT],
            Awaitable[grpc.aio.UnaryStreamCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: RequestT,
    ) -> AsyncIterator[ResponseT] | grpc.aio.UnaryStreamCall[RequestT, ResponseT]:
        return await continuation(_with_request_id(client_call_details), request)


class _RequestIdStreamUnary(RequestContextClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[RequestT] | Iterable[RequestT]],
            Awaitable[grpc.aio.StreamUnaryCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[RequestT] | Iterable[RequestT],
    ) -> ResponseT | grpc.aio.StreamUnaryCall[RequestT, ResponseT]:
        return await continuation(_with_request_id(client_call_details), request_iterator)


class _RequestIdStreamStream(
    RequestContextClientInterceptor, grpc.aio.StreamStreamClientInterceptor
):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[RequestT] | Iterable[RequestT]],
            Awaitable[grpc.aio.StreamStreamCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[RequestT] | Iterable[RequestT],
    ) -> AsyncIterator[ResponseT] | grpc.aio.StreamStreamCall[RequestT, ResponseT]:
        return await continuation(_with_request_id(client_call_details), request_iterator)
