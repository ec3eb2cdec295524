"""Client interceptors that rewrite a call's details before it goes out: one
family for every rewrite (the mesh's service token on every call of a
channel, the current request's x-request-id). grpc.aio files each
interceptor under the first call kind it is, so the family has one thin
class per kind around one rewrite."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TypeAlias, TypeVar

import grpc

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

Rewrite: TypeAlias = Callable[[grpc.aio.ClientCallDetails], grpc.aio.ClientCallDetails]


def with_missing_metadata(
    details: grpc.aio.ClientCallDetails, pairs: Iterable[tuple[str, str]]
) -> grpc.aio.ClientCallDetails:
    """`details` with those of `pairs` whose key the call does not set itself;
    the same details when there are none to add."""
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    missing = [(key, value) for key, value in pairs if metadata.get(key) is None]
    if not missing:
        return details
    for key, value in missing:
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
    )


class _Rewriting:
    def __init__(self, rewrite: Rewrite) -> None:
        self._rewrite = rewrite


class _UnaryUnary(_Rewriting, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, RequestT],
            Awaitable[grpc.aio.UnaryUnaryCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: RequestT,
    ) -> ResponseT | grpc.aio.UnaryUnaryCall[RequestT, ResponseT]:
        return await continuation(self._rewrite(client_call_details), request)


class _UnaryStream(_Rewriting, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, RequestT],
            Awaitable[grpc.aio.UnaryStreamCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: RequestT,
    ) -> AsyncIterator[ResponseT] | grpc.aio.UnaryStreamCall[RequestT, ResponseT]:
        return await continuation(self._rewrite(client_call_details), request)


class _StreamUnary(_Rewriting, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[RequestT] | Iterable[RequestT]],
            Awaitable[grpc.aio.StreamUnaryCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[RequestT] | Iterable[RequestT],
    ) -> ResponseT | grpc.aio.StreamUnaryCall[RequestT, ResponseT]:
        return await continuation(self._rewrite(client_call_details), request_iterator)


class _StreamStream(_Rewriting, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[RequestT] | Iterable[RequestT]],
            Awaitable[grpc.aio.StreamStreamCall[RequestT, ResponseT]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[RequestT] | Iterable[RequestT],
    ) -> AsyncIterator[ResponseT] | grpc.aio.StreamStreamCall[RequestT, ResponseT]:
        return await continuation(self._rewrite(client_call_details), request_iterator)


def rewriting_interceptors(rewrite: Rewrite) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind, each sending every call with `rewrite(details)`."""
    return [kind(rewrite) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def fixed_metadata_interceptors(
    pairs: Sequence[tuple[str, str]],
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding `pairs` to every call that does not set those keys itself."""
    fixed = tuple(pairs)
    return rewriting_interceptors(lambda details: with_missing_metadata(details, fixed))
