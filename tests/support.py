"""Helpers shared by tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], *, within_s: float = 15.0
) -> None:
    """Waits until `check` holds; fails if it never does. For effects that
    happen off the request path (ledger writes, events), not for timing."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition never held within {within_s} s")
        await asyncio.sleep(0.02)


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The field names of the google.rpc.BadRequest detail of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status details on the error"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def free_port() -> int:
    """A port nothing listens on now (for a server a test starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
