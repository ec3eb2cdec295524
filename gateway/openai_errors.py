"""Mesh errors as OpenAI errors: `{"error": {"message", "type", "param", "code"}}`
with the HTTP status OpenAI's clients act on.

Everything is read from the error's `google.rpc.Status`, the same status a
gRPC client gets: `BadRequest` names the parameter, `RetryInfo` becomes
`Retry-After`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2

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
    error = {"message": message, "type": kind.type, "param": param, "code": kind.code}
    headers: dict[str, str] = {}
    retry = status_detail(status, error_details_pb2.RetryInfo)
    if retry is not None and retry.HasField("retry_delay"):
        delay_s = max(0.0, retry.retry_delay.ToTimedelta().total_seconds())
        # Whole seconds by RFC 9110; OpenAI's clients prefer the milliseconds.
        headers["retry-after"] = str(math.ceil(delay_s))
        headers["retry-after-ms"] = str(math.ceil(delay_s * 1000))
    return HttpError(kind.status, {"error": error}, headers)
