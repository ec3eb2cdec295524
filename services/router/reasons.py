"""The ErrorInfo reason a failed call carried: it tells a replica that is
full (its adapter slots all in use) from one that is failing."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common.errors import status_detail
from services.inference.spec import ADAPTER_SLOTS_BUSY_REASON

# Reasons of a replica's refusal that are worth another replica but say
# nothing against this one's health.
FULL_REASONS = frozenset({ADAPTER_SLOTS_BUSY_REASON})


def failure_reason(err: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason in the call's status details ("": none)."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return ""  # trailers that disagree with the status line: none to trust
    info = status_detail(status, error_details_pb2.ErrorInfo) if status is not None else None
    return info.reason if info is not None else ""
