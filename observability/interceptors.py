"""The request-context interceptors: x-request-id in, x-request-id out.

The server side wraps the handler itself, so the context is set inside the
task that runs the handler (and every call it makes), not only around
`intercept_service`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from observability.context import REQUEST_ID_METADATA_KEY, bind_request, current_request_id
from observability.handlers import Behavior, CachedRewrap, stream_responses


def _request_id_from(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else value
    return None


def _bind_from(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    structlog.contextvars.clear_contextvars()
    request_id = _request_id_from(context)
    if request_id:
        bind_request(request_id)


class RequestContextServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._rewrap = CachedRewrap(_unary, _stream)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._rewrap(await continuation(handler_call_details))


def _unary(behavior: Behavior) -> Behavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _bind_from(context)
        return await behavior(request, context)

    return wrapped


def _stream(behavior: Behavior) -> Behavior:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _bind_from(context)
        async for response in stream_responses(behavior(request, context)):
            yield response

    return wrapped


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    request_id = current_request_id()
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if request_id is None or metadata.get(REQUEST_ID_METADATA_KEY) is not None:
        return details
    metadata.add(REQUEST_ID_METADATA_KEY, request_id)
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
    )


class _RequestIdUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _RequestIdUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _RequestIdStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_request_id(details), request_iterator)


class _RequestIdStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_request_id(details), request_iterator)


def request_context_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Adds the current request's x-request-id to every outgoing call."""
    return [
        _RequestIdUnaryUnary(),
        _RequestIdUnaryStream(),
        _RequestIdStreamUnary(),
        _RequestIdStreamStream(),
    ]
