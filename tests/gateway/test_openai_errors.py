"""Mesh errors as OpenAI errors: the HTTP status OpenAI's clients act on, the
parameter from BadRequest, Retry-After from RetryInfo; and the HTTP face's
other errors (bodies, paths, surprises) through the same one mapping."""

from __future__ import annotations

import grpc
import pytest
from fastapi.exceptions import RequestValidationError
from google.rpc import status_pb2
from starlette.exceptions import HTTPException

from gateway.openai_errors import http_error, openai_error, request_too_large
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


def test_a_mesh_error_maps_as_http_error_does() -> None:
    err = InvalidArgumentError("logprobs", "must be 0 to 20")
    assert openai_error(err, CHAT_PARAMS) == http_error(err, CHAT_PARAMS)


def test_a_body_of_the_wrong_shape_names_the_parameter() -> None:
    wrong_type = {"type": "float_parsing", "loc": ("body", "temperature"), "msg": "not a number"}
    no_fit = {"type": "string_type", "loc": ("body", "messages", 0, "content", "str"), "msg": "x"}
    error = openai_error(RequestValidationError([wrong_type]))
    assert error.status == 400
    assert error.body["error"] == {
        "message": "temperature: not a number",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
    union = openai_error(RequestValidationError([no_fit])).body["error"]
    assert union["param"] == "messages[0].content"
    assert union["message"] == "messages[0].content: is none of the accepted types"
    not_json = {"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error"}
    error = openai_error(RequestValidationError([not_json]))
    assert error.body["error"]["message"] == "request body: JSON decode error"
    assert error.body["error"]["param"] is None


def test_an_unknown_path_or_method_keeps_its_status_and_headers() -> None:
    assert openai_error(HTTPException(404)).body["error"]["code"] == "not_found"
    wrong_method = openai_error(HTTPException(405, headers={"Allow": "POST"}))
    assert (wrong_method.status, wrong_method.headers) == (405, {"Allow": "POST"})
    assert wrong_method.body["error"]["code"] == "method_not_allowed"
    assert openai_error(HTTPException(418)).body["error"]["code"] == "invalid_request"


def test_anything_unexpected_is_an_internal_error_that_says_nothing_more() -> None:
    error = openai_error(RuntimeError("the secret detail"))
    assert error == http_error(MeshError("internal error"))
    assert error.status == 500


def test_a_request_refused_for_its_size() -> None:
    error = request_too_large(413, "request body: over the limit of 10 bytes")
    assert error.status == 413
    assert error.body["error"]["code"] == "request_too_large"
    assert error.body["error"]["type"] == "invalid_request_error"
