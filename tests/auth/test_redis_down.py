"""Redis down: Reserve answers UNAVAILABLE (retryable), never INTERNAL, and
never admits a request unchecked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from maas.v1 import auth_pb2, auth_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from tests.auth.conftest import ADMIN_TOKEN, PEPPER, REPO
from tests.support import free_port

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.fixture
def doomed_redis() -> Iterator[tuple[str, int]]:
    """A second redis-server of this test's own: its URL and its pid, to kill."""
    port = free_port()
    url = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "redis.sh"), str(port)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    pid = int(Path(f"/tmp/maas-redis-{port}/redis.pid").read_text())
    yield url, pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(f"/tmp/maas-redis-{port}", ignore_errors=True)


async def test_reserve_is_unavailable_while_redis_is_down(
    doomed_redis: tuple[str, int], tmp_path: Path
) -> None:
    url, pid = doomed_redis
    settings = AuthSettings(
        port=0, admin_token=ADMIN_TOKEN, key_pepper=PEPPER.decode(), quota_url=url
    )
    telemetry = setup("auth", TelemetrySettings())
    async with (
        open_sqlite_store(tmp_path / "auth.db") as store,
        serving(settings, telemetry, store=store) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = auth_pb2_grpc.AuthStub(channel)
        tenant = await stub.CreateTenant(
            auth_pb2.CreateTenantRequest(name="acme", plan=auth_pb2.Plan(requests_per_minute=5)),
            metadata=ADMIN,
        )
        request = auth_pb2.ReserveRequest(
            tenant_id=tenant.tenant_id, request_id="r1", model="tiny", estimated_tokens=5
        )
        held = await stub.Reserve(request)  # Redis up: admitted

        os.kill(pid, signal.SIGKILL)
        for call in (
            stub.Reserve(
                auth_pb2.ReserveRequest(
                    tenant_id=tenant.tenant_id, request_id="r2", model="tiny", estimated_tokens=5
                )
            ),
            stub.Renew(auth_pb2.RenewRequest(reservation_id=held.reservation_id)),
            stub.Commit(auth_pb2.CommitRequest(reservation_id=held.reservation_id, used_tokens=5)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await call
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    telemetry.shutdown()
