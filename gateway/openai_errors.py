"""Every error of the HTTP face as OpenAI's `{"error": {"message", "type",
"param", "code"}}` with the HTTP status OpenAI's clients act on: `openai_error`
is the one place that maps them.

A mesh error is read from its `google.rpc.Status`, the same status a gRPC
client gets: `BadRequest` names the parameter, `RetryInfo` becomes
`Retry-After`. A body FastAPI could not read, an unknown path or method, and
an oversized request are invalid requests; anything else is an internal error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi.exceptions import RequestValidationError
from google.rpc import error_details_pb2
from starlette.exceptions import HTTPException

from gateway.openai_requests import openai_param
from services.common.errors import MeshError, status_detail


@dataclass(frozen=True)
class _Kind:
    status: int
    type: str
    code: str


_BAD_REQUEST = _Kind(400, "invalid_request_error", "invalid_value")
_SERVER_ERROR = _Kind(500, "server_error", "internal_error")

_KINDS: Mapping[grpc.StatusCode, _Kind] = {
    grpc.StatusCode.INVALID_ARGUMENT: _BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: _BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: _BAD_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: _Kind(401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: _Kind(403, "permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: _Kind(404, "not_found_error", "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: _Kind(409, "conflict_error", "already_exists"),
    grpc.StatusCode.ABORTED: _Kind(409, "conflict_error", "aborted"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: _Kind(429, "rate_limit_error", "rate_limit_exceeded"),
    # nginx's "client closed request": nobody reads it, but logs and spans do.
    grpc.StatusCode.CANCELLED: _Kind(499, "cancelled_error", "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: _Kind(501, "server_error", "not_implemented"),
    grpc.StatusCode.UNAVAILABLE: _Kind(503, "service_unavailable_error", "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: _Kind(504, "timeout_error", "deadline_exceeded"),
}


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def openai_error(exc: BaseException, params: Mapping[str, str] | None = None) -> HttpError:
    """Any error met while answering, as OpenAI would answer it; `params` as
    for `http_error`. The caller logs what it did not expect."""
    if isinstance(exc, MeshError):
        return http_error(exc, params)
    if isinstance(exc, RequestValidationError):
        return _invalid_body(exc)
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        body = _body(str(exc.detail), "invalid_request_error", None, code)
        return HttpError(exc.status_code, body, dict(exc.headers or {}))
    return http_error(MeshError("internal error"))


def request_too_large(status: int, message: str) -> HttpError:
    """A head (431) or body (413) refused for its size before it was read."""
    return HttpError(status, _body(message, "invalid_request_error", None, "request_too_large"))


def http_error(err: MeshError, params: Mapping[str, str] | None = None) -> HttpError:
    """`err` as OpenAI would answer it; `params` renames generation fields to
    the endpoint's parameter names."""
    kind = _KINDS.get(err.code, _SERVER_ERROR)
    status = err.status_proto()
    param: str | None = None
    bad_request = status_detail(status, error_details_pb2.BadRequest)
    if bad_request is not None and bad_request.field_violations:
        param = openai_param(bad_request.field_violations[0].field, params or {})
    message = err.message
    if param is not None and bad_request is not None:
        message = f"{param}: {bad_request.field_violations[0].description}"
    headers: dict[str, str] = {}
    retry = status_detail(status, error_details_pb2.RetryInfo)
    if retry is not None and retry.HasField("retry_delay"):
        delay_s = max(0.0, retry.retry_delay.ToTimedelta().total_seconds())
        # Whole seconds by RFC 9110; OpenAI's clients prefer the milliseconds.
        headers["retry-after"] = str(math.ceil(delay_s))
        headers["retry-after-ms"] = str(math.ceil(delay_s * 1000))
    return HttpError(kind.status, _body(message, kind.type, param, kind.code), headers)


def _body(message: str, type_: str, param: str | None, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _invalid_body(exc: RequestValidationError) -> HttpError:
    """A body that is not JSON or not the endpoint's shape, naming the first
    parameter at fault as OpenAI does (`messages[0].content`)."""
    errors: Sequence[Any] = exc.errors()
    param, message = None, "request body: invalid"
    if errors and errors[0]["type"] == "json_invalid":
        message = f"request body: {errors[0]['msg']}"
    elif errors:
        loc = list(errors[0]["loc"])
        field = _field_part(loc)
        param = _param_of(field) or None
        detail = errors[0]["msg"] if field == loc else "is none of the accepted types"
        message = f"{param}: {detail}" if param else f"request body: {detail}"
    return HttpError(400, _body(message, "invalid_request_error", param, "invalid_value"))


def _field_part(loc: list[Any]) -> list[Any]:
    """The part of an error's loc that names a field. A value that fits no
    member of a union fails once per member, under a loc that goes on with the
    member's type ("str", "list[int]", "ContentPart"): the field ends there."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and (
            part in _TYPE_NAMES or part[:1].isupper() or any(c in part for c in "[]()-")
        ):
            return loc[:i]
    return loc


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param_of(loc: Sequence[Any]) -> str:
    """`("body", "messages", 0, "content")` as `messages[0].content`, and
    `("query", "group_by")` as `group_by`."""
    param = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query") else loc:
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            param += f".{part}" if param else str(part)
    return param
