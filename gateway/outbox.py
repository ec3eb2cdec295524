"""Usage records on their way to the ledger, kept on local disk until the
ledger acknowledges them.

A record is written to a small SQLite file (WAL) as its request ends; a
sender delivers what is there and deletes each record only once the ledger
has acknowledged it. A gateway that crashes or stops with records undelivered
sends them when it starts again, and the ledger's idempotency on request id
makes a resend harmless: nothing is lost, nothing billed twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiosqlite
import grpc
import structlog

from maas.v1 import metering_pb2, metering_pb2_grpc

log = structlog.get_logger(__name__)

BATCH = 256


class UsageOutbox:
    def __init__(
        self,
        path: Path,
        stub: metering_pb2_grpc.MeteringAsyncStub,
        *,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._path = path
        self._stub = stub
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._db: aiosqlite.Connection | None = None
        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()  # set while nothing is waiting for the ledger
        self._added = 0  # records written; tells a stale "nothing there" from a real one
        self._sender: asyncio.Task[None] | None = None
        self._adds: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.dead_letters = 0

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (request_id TEXT PRIMARY KEY, record BLOB NOT NULL)"
        )
        await self._db.commit()
        self._sender = asyncio.create_task(self._send_loop())
        self._wakeup.set()  # records left by an earlier run go first

    def add(self, record: metering_pb2.UsageRecord) -> None:
        """Queues the record for the ledger; returns at once (the disk write
        follows in the background and is awaited at close)."""
        task = asyncio.create_task(self._add(record))
        self._adds.add(task)
        task.add_done_callback(self._adds.discard)

    async def _add(self, record: metering_pb2.UsageRecord) -> None:
        assert self._db is not None
        await self._db.execute(
            "INSERT OR IGNORE INTO outbox VALUES (?, ?)",
            (record.request_id, record.SerializeToString()),
        )
        await self._db.commit()
        self._added += 1
        self._empty.clear()
        self._wakeup.set()

    async def pending(self) -> int:
        assert self._db is not None
        async with self._db.execute("SELECT COUNT(*) FROM outbox") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def aclose(self, timeout_s: float) -> None:
        """Writes what was added, tries to deliver it for up to timeout_s, then
        stops; what is still undelivered stays on disk for the next start."""
        if self._adds:
            await asyncio.wait(set(self._adds))
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout_s)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _send_loop(self) -> None:
        assert self._db is not None
        backoff = self._initial_backoff_s
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                added_before = self._added
                async with self._db.execute(
                    "SELECT request_id, record FROM outbox LIMIT ?", (BATCH,)
                ) as cur:
                    rows = [(str(r[0]), bytes(r[1])) for r in await cur.fetchall()]
                if not rows:
                    if self._added == added_before:
                        self._empty.set()
                    break
                try:
                    await self._deliver(rows)
                    backoff = self._initial_backoff_s
                except grpc.aio.AioRpcError as err:
                    # Whatever the code, the records stay on disk: a ledger that is
                    # down, or one misconfigured, must not cost a bill.
                    log.warning(
                        "ledger call failed; usage kept in the outbox", code=err.code().name
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff_s)

    async def _deliver(self, rows: list[tuple[str, bytes]]) -> None:
        """Sends the rows as one batch; deletes those the ledger stored or
        refused for good, in one transaction. A failed call deletes nothing."""
        assert self._db is not None
        records = [metering_pb2.UsageRecord.FromString(blob) for _, blob in rows]
        reply = await self._stub.RecordUsageBatch(
            metering_pb2.RecordUsageBatchRequest(records=records), timeout=10.0
        )
        for record, result in zip(records, reply.results, strict=True):
            if result.error.code == grpc.StatusCode.OK.value[0]:
                self.delivered += 1
                continue
            # Refused for good (e.g. the same id with other numbers): keeping it
            # would retry forever; log it whole.
            self.dead_letters += 1
            log.error("usage record refused by the ledger", code=result.error.code,
                      details=result.error.message, record=str(record))  # fmt: skip
        await self._db.executemany(
            "DELETE FROM outbox WHERE request_id = ?", [(request_id,) for request_id, _ in rows]
        )
        await self._db.commit()
