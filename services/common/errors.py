"""The one error-mapping layer: domain errors to gRPC status with rich details.

Servicers raise `MeshError`s (or a service's own exceptions, mapped by its
translator); `ErrorMappingInterceptor` turns them into a status with
`google.rpc` details, and passes a downstream hop's status through unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from observability.handlers import Behavior, CachedRewrap, stream_responses

log = structlog.get_logger(__name__)


class MeshError(Exception):
    """An error a client can act on; `code` is its gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> Sequence[Message]:
        return ()

    def status_proto(self) -> status_pb2.Status:
        """As a google.rpc.Status, for errors carried inside a reply (batches)."""
        packed = []
        for detail in self.details():
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_status(self) -> grpc.Status:
        return cast(grpc.Status, rpc_status.to_status(self.status_proto()))


class InvalidArgumentError(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description

    def details(self) -> Sequence[Message]:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.description
        )
        return (error_details_pb2.BadRequest(field_violations=[violation]),)


class UnauthenticatedError(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(MeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(MeshError):
    """Over a limit; tells the client which one and when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float, subject: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.subject = subject

    def details(self) -> Sequence[Message]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.subject, description=self.message
                )
            ]
        )
        return (error_details_pb2.RetryInfo(retry_delay=delay), quota)


Translator = Callable[[Exception], MeshError | None]


def _no_translation(_: Exception) -> MeshError | None:
    return None


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps what a handler raises to a status: `MeshError`s (after the service's
    translator), a downstream call's status as is, anything else to INTERNAL
    with the cause logged rather than sent to the client."""

    def __init__(self, translate: Translator = _no_translation) -> None:
        self._translate = translate
        self._rewrap = CachedRewrap(self._wrap_unary, self._wrap_stream)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._rewrap(await continuation(handler_call_details))

    def _wrap_unary(self, behavior: Behavior) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except Exception as exc:
                await self._abort(exc, context)

        return wrapped

    def _wrap_stream(self, behavior: Behavior) -> Behavior:
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for response in stream_responses(behavior(request, context)):
                    yield response
            except Exception as exc:
                await self._abort(exc, context)

        return wrapped

    async def _abort(self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, grpc.aio.AioRpcError):
            # A downstream hop already chose the status; pass it, details included.
            await context.abort(
                exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
            )
        mapped = exc if isinstance(exc, MeshError) else self._translate(exc)
        if mapped is None:
            log.exception("unhandled error", exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        # set_code first: the tracing interceptor learns the status from it
        # (abort_with_status alone would leave the span looking successful).
        context.set_code(mapped.code)
        context.set_details(mapped.message)
        await context.abort_with_status(mapped.to_status())
