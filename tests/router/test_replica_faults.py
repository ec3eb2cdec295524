"""Which failed replica calls count against the replica: only those the
replica caused, never a caller's deadline, cancel or bad input."""

from __future__ import annotations

import grpc
import pytest

from services.router.retry import is_replica_fault

CALLER_CODES = [
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    # A request can make an engine fail: no caller may take a replica down.
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
]


@pytest.mark.parametrize("code", CALLER_CODES)
def test_the_requests_own_failures_never_count(code: grpc.StatusCode) -> None:
    assert not is_replica_fault(code, caller_gone=False)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_a_replica_going_away_counts_while_its_caller_waits(code: grpc.StatusCode) -> None:
    assert is_replica_fault(code, caller_gone=False)


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_nothing_counts_once_the_caller_has_gone(code: grpc.StatusCode) -> None:
    """Its cancel or its deadline: whatever the replica call said after that."""
    assert not is_replica_fault(code, caller_gone=True)
