"""The one error-mapping layer: domain errors to gRPC status with rich details.

Servicers raise `MeshError`s (or a service's own exceptions, mapped by its
translator); `ErrorMappingInterceptor` turns them into a status with
`google.rpc` details, and passes a downstream hop's status through unchanged.
Every `MeshError` carries an `ErrorInfo` (reason, domain, metadata) besides the
details of its kind (`BadRequest`, `QuotaFailure`, `RetryInfo`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from observability.handlers import Behavior, RewrappingServerInterceptor, stream_responses

log = structlog.get_logger(__name__)


ERROR_DOMAIN = "maas.dev"

_DetailT = TypeVar("_DetailT", bound=Message)


def status_detail(status: status_pb2.Status, kind: type[_DetailT]) -> _DetailT | None:
    """The first detail of type `kind` in `status`, if it has one."""
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            detail = kind()
            packed.Unpack(detail)
            return detail
    return None


def _packed(details: Sequence[Message]) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return packed


class MeshError(Exception):
    """An error a client can act on; `code` is its gRPC status. `reason` (an
    UPPER_SNAKE_CASE constant, by default the code's name) and `metadata` go
    out as its `google.rpc.ErrorInfo`."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code.name
        self.metadata = dict(metadata or {})

    def details(self) -> Sequence[Message]:
        """The details of this kind of error, beside the ErrorInfo every one has."""
        return ()

    def error_info(self) -> error_details_pb2.ErrorInfo:
        return error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )

    def status_proto(self) -> status_pb2.Status:
        """As a google.rpc.Status: what goes on the wire, and what errors carried
        inside a reply (batches) hold."""
        return status_pb2.Status(
            code=self.code.value[0],
            message=self.message,
            details=_packed([*self.details(), self.error_info()]),
        )

    def to_status(self) -> grpc.Status:
        return cast(grpc.Status, rpc_status.to_status(self.status_proto()))


class InvalidArgumentError(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}", metadata={"field": field})
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


class AbortedError(MeshError):
    """A conflict with a concurrent operation; retrying later may work."""

    code = grpc.StatusCode.ABORTED


class UnavailableError(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(MeshError):
    """Over a limit; tells the client which one and when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float, subject: str = "") -> None:
        super().__init__(message, metadata={"subject": subject} if subject else None)
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


class RemoteError(MeshError):
    """A status another hop chose, carried on as it came: code, message and
    every detail (`status_proto` holds them). A hop that calls others raises
    this for their failures, so its own callers see what the hop below said."""

    def __init__(self, status: status_pb2.Status) -> None:
        self.code = next(
            (code for code in grpc.StatusCode if code.value[0] == status.code),
            grpc.StatusCode.UNKNOWN,
        )
        super().__init__(status.message)
        self._status = status

    def error_info(self) -> error_details_pb2.ErrorInfo:
        return status_detail(self._status, error_details_pb2.ErrorInfo) or super().error_info()

    def status_proto(self) -> status_pb2.Status:
        status = status_pb2.Status()
        status.CopyFrom(self._status)
        if status_detail(status, error_details_pb2.ErrorInfo) is None:
            # A hop outside the mesh (or the channel itself) said no more than a code.
            status.details.extend(_packed([super().error_info()]))
        return status


def error_from_rpc(err: grpc.aio.AioRpcError) -> RemoteError:
    """A downstream call's failure as a `MeshError`, its rich status kept."""
    status: status_pb2.Status | None = None
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        # Trailers that disagree with the status line: trust the status line.
        status = None
    if status is None:
        status = status_pb2.Status(code=err.code().value[0], message=err.details() or "")
    return RemoteError(status)


@contextmanager
def remote_errors() -> Iterator[None]:
    """Turns the failures of downstream calls made inside into `RemoteError`s."""
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise error_from_rpc(err) from err


Translator = Callable[[Exception], MeshError | None]


def _no_translation(_: Exception) -> MeshError | None:
    return None


class ErrorMappingInterceptor(RewrappingServerInterceptor):
    """Maps what a handler raises to a status: `MeshError`s (after the service's
    translator), a downstream call's status as is, anything else to INTERNAL
    with the cause logged rather than sent to the client."""

    def __init__(self, translate: Translator = _no_translation) -> None:
        self._translate = translate
        super().__init__(self._wrap_unary, self._wrap_stream)

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
