"""Outbox files in a shared directory: each gateway's locked while it runs,
adopted (delivered, then removed) by another once its lock is free, with the
adoption and the adopted backlog as metrics. The lock holders here are
processes of their own, as gateways are (a flock is per open file)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from gateway.outbox import UsageOutbox
from gateway.outbox_dir import OutboxAdopter, OutboxLock, close_own, own_outbox
from maas.v1 import metering_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.server import serving
from services.auth.settings import AuthSettings
from tests.gateway.test_outbox import gateway_metrics, record
from tests.support import eventually, free_port, metric_total

# A process that holds an outbox file's lock until its stdin closes.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def ledger_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [str(r[0]) for r in conn.execute("SELECT request_id FROM usage_records")]


async def fill(path: Path, count: int, dead_port: int) -> None:
    """Leaves `count` records in an outbox file, as a gateway whose ledger was down."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dead_port}") as ch:
        outbox = UsageOutbox(path, metering_pb2_grpc.MeteringStub(ch), initial_backoff_s=0.05)
        await outbox.open()
        for i in range(count):
            outbox.add(record(i))
        assert await outbox.aclose(0) == count


@pytest_asyncio.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    db = tmp_path / "auth.db"
    settings = AuthSettings(port=0, admin_token="a" * 32, key_pepper="p" * 32, database_path=db)
    telemetry = setup("auth", TelemetrySettings())
    async with serving(settings, telemetry) as server:
        yield f"127.0.0.1:{server.port}", db
    telemetry.shutdown()


async def test_an_orphaned_outbox_is_delivered_once_and_removed(
    tmp_path: Path, ledger: tuple[str, Path]
) -> None:
    target, db = ledger
    directory = tmp_path / "outboxes"
    orphan = own_outbox(directory)
    await fill(orphan.path, 12, free_port())
    orphan.release()  # its gateway is gone: the kernel let go of the lock
    held = own_outbox(directory)
    await fill(held.path, 3, free_port())
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(held.path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    held.release()
    assert holder.stdout is not None and await holder.stdout.readline() == b"held\n"
    try:
        metrics, reader = gateway_metrics()
        async with grpc.aio.insecure_channel(target) as ch:
            adopter = OutboxAdopter(
                directory, metering_pb2_grpc.MeteringStub(ch), interval_s=0.05, metrics=metrics
            )
            adopter.start()
            try:
                await eventually(lambda: not orphan.path.exists())
                assert adopter.adopted == 1
            finally:
                await adopter.aclose()
        assert sorted(ledger_ids(db)) == sorted(f"out-{i}" for i in range(12))
        assert metric_total(reader, "maas.gateway.outbox.adopted") == 1
        assert metric_total(reader, "maas.gateway.outbox.adopted_backlog") == 0
        # The file whose gateway still runs is left alone, records and all.
        assert held.path.exists()
        assert list(directory.glob("gateway-*.db")) == [held.path]
    finally:
        await holder.communicate(b"")


async def test_a_gateway_removes_its_empty_file_and_leaves_one_with_records(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "outboxes"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as ch:
        stub = metering_pb2_grpc.MeteringStub(ch)
        empty = own_outbox(directory)
        outbox = UsageOutbox(empty.path, stub)
        await outbox.open()
        await close_own(outbox, empty, 0)
        assert not empty.path.exists()

        kept = own_outbox(directory)
        outbox = UsageOutbox(kept.path, stub, initial_backoff_s=0.05)
        await outbox.open()
        outbox.add(record(1))
        await close_own(outbox, kept, 0)
        assert kept.path.exists()
        # Free for another gateway to take.
        again = OutboxLock.take(kept.path)
        assert again is not None
        again.release()


def test_a_removed_file_is_not_taken_nor_made_again(tmp_path: Path) -> None:
    lock = own_outbox(tmp_path)
    path = lock.path
    lock.remove()
    assert OutboxLock.take(path) is None
    assert not path.exists()
