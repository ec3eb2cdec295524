"""Mesh errors as OpenAI errors: the HTTP status OpenAI's clients act on, the
parameter from BadRequest, Retry-After from RetryInfo."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import status_pb2

from gateway.openai_errors import http_error
from gateway.openai_requests import CHAT_PARAMS
from services.common.errors import (
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    ResourceExhaustedError,
    UnauthenticatedError,
)


def remote(code: grpc.StatusCode, message: str = "from below") -> RemoteError:
    return RemoteError(status_pb2.Status(code=code.value[0], message=message))


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (InvalidArgumentError("temperature", "must be in [0, 2]"), 400, "invalid_request_error"),
        (UnauthenticatedError("invalid key"), 401, "authentication_error"),
        (PermissionDeniedError("no such scope"), 403, "permission_error"),
        (NotFoundError("no replica serves model 'x'"), 404, "not_found_error"),
        (ResourceExhaustedError("rpm", retry_after_s=1), 429, "rate_limit_error"),
        (remote(grpc.StatusCode.UNAVAILABLE), 503, "service_unavailable_error"),
        (remote(grpc.StatusCode.DEADLINE_EXCEEDED), 504, "timeout_error"),
        (remote(grpc.StatusCode.DATA_LOSS), 500, "server_error"),
        (MeshError("internal error"), 500, "server_error"),
    ],
)
def test_status_and_type(err: MeshError, status: int, kind: str) -> None:
    error = http_error(err)
    assert error.status == status
    assert set(error.body) == {"error"}
    assert set(error.body["error"]) == {"message", "type", "param", "code"}
    assert error.body["error"]["type"] == kind
    assert error.body["error"]["message"]


def test_a_bad_field_is_named_as_the_endpoint_calls_it() -> None:
    error = http_error(InvalidArgumentError("logprobs", "must be 0 to 20"), CHAT_PARAMS)
    assert error.body["error"]["param"] == "top_logprobs"
    assert error.body["error"]["message"] == "top_logprobs: must be 0 to 20"
    assert http_error(UnauthenticatedError("no")).body["error"]["param"] is None


def test_retry_after_comes_from_retry_info() -> None:
    error = http_error(
        ResourceExhaustedError("rpm", retry_after_s=1.2, subject="requests_per_minute")
    )
    assert error.headers == {"retry-after": "2", "retry-after-ms": "1200"}
    assert http_error(UnauthenticatedError("no")).headers == {}
