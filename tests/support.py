"""Helpers shared by tests."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.metrics.export import InMemoryMetricReader


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


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    stdout: str
    stderr: str


async def run_process(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    hang_guard_s: float = 300.0,
) -> ProcessResult:
    """Runs a command without blocking the event loop the in-process mesh
    serves on. `env` is added to this process's environment; a command still
    running after `hang_guard_s` is killed and fails the test."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), hang_guard_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{args} still ran after {hang_guard_s} s") from None
    assert process.returncode is not None
    return ProcessResult(process.returncode, out.decode(), err.decode())


def metric_total(reader: InMemoryMetricReader, name: str) -> float:
    """A metric's latest value summed over its attributes; 0 when never recorded."""
    data = reader.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for m in scope.metrics:
                if m.name == name:
                    points: Any = m.data.data_points
                    total += sum(float(p.value) for p in points)
    return total
