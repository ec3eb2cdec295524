"""The request-context interceptors (x-request-id in, x-request-id out) and
the one that keeps a streaming call's clean-up in the call's own task.

The server side wraps the handler itself, so the context is set inside the
task that runs the handler (and every call it makes), not only around
`intercept_service`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from observability.call_metadata import rewriting_interceptors, with_missing_metadata
from observability.context import (
    REQUEST_ID_METADATA_KEY,
    bind_request,
    clear_request,
    current_request_id,
)
from observability.handlers import (
    Behavior,
    RewrappingServerInterceptor,
    stream_responses,
    unchanged,
    written_in_call_task,
)


class StreamClosingServerInterceptor(RewrappingServerInterceptor):
    """Runs streaming handlers so that a cancelled call closes them in its own
    task (see `written_in_call_task`). Must come first: it only helps the
    layers it wraps."""

    def __init__(self) -> None:
        super().__init__(unchanged, written_in_call_task)


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


class RequestContextServerInterceptor(RewrappingServerInterceptor):
    """Binds the caller's x-request-id for the duration of the handler."""

    def __init__(self) -> None:
        super().__init__(_unary, _stream)


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
    return with_missing_metadata(details, ((REQUEST_ID_METADATA_KEY, request_id),))


def request_id_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the current request's x-request-id to outgoing
    calls that do not set one."""
    return rewriting_interceptors(_with_request_id)
