"""Usage records on their way to the ledger, kept on local disk until the
ledger acknowledges them.

A record is written to a small SQLite file (WAL) as its request ends; a
sender delivers what is there and deletes each record only once the ledger
has acknowledged it. A gateway that crashes or stops with records undelivered
sends them when it starts again, and the ledger's idempotency on request id
makes a resend harmless: nothing is lost, nothing billed twice.

A request has one row: a later record for it (a running stream's progress,
then its final record) replaces the one waiting, and a delivered row is
deleted only if it was not replaced meanwhile. The sender survives any
error (a ledger that is down, a bug, a row it cannot read) and keeps going
with backoff; the backlog and the records set aside are metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import grpc
import structlog
from google.protobuf.message import DecodeError

from gateway.metrics import GatewayMetrics
from maas.v1 import metering_pb2, metering_pb2_grpc
from services.common.backoff import Backoff, reconnect_forever
from services.common.sqlite_writer import GroupCommitWriter, connect_wal

log = structlog.get_logger(__name__)

# Records read and sent per ledger call: one round trip for many small records,
# far below gRPC's 4 MiB message limit.
BATCH = 256


@dataclass(frozen=True)
class _Put:
    """A record waiting for the ledger, in place of any earlier one of its request."""

    request_id: str
    record: bytes


@dataclass(frozen=True)
class _Remove:
    """(request_id, record) rows done with; a row replaced meanwhile stays."""

    rows: tuple[tuple[str, bytes], ...]


async def _write(db: aiosqlite.Connection, changes: Sequence[_Put | _Remove]) -> int:
    """Writes `changes` and returns the rows waiting after them. In submission
    order: a record put after a delivery's removal must stay. Each run of puts
    is one statement (every statement is a hop to the database's thread)."""
    puts: list[tuple[str, bytes]] = []
    for change in changes:
        if isinstance(change, _Put):
            puts.append((change.request_id, change.record))
            continue
        await _put(db, puts)
        puts = []
        await db.executemany("DELETE FROM outbox WHERE request_id = ? AND record = ?", change.rows)
    await _put(db, puts)
    return await _count(db)


async def _put(db: aiosqlite.Connection, rows: list[tuple[str, bytes]]) -> None:
    if rows:
        await db.executemany(
            "INSERT OR REPLACE INTO outbox (request_id, record) VALUES (?, ?)", rows
        )


async def _count(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT COUNT(*) FROM outbox") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


class UsageOutbox:
    def __init__(
        self,
        path: Path,
        stub: metering_pb2_grpc.MeteringAsyncStub,
        *,
        metrics: GatewayMetrics | None = None,
        report_backlog: bool = True,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        call_timeout_s: float = 10.0,
    ) -> None:
        self._path = path
        self._stub = stub
        self._metrics = metrics
        # False for another gateway's outbox being drained: its backlog is reported apart.
        self._report_backlog = report_backlog
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._call_timeout_s = call_timeout_s
        self._db: aiosqlite.Connection | None = None
        self._writer: GroupCommitWriter[_Put | _Remove, None] | None = None
        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()  # set while nothing is waiting for the ledger
        self._added = 0  # records written; tells a stale "nothing there" from a real one
        self._sender: asyncio.Task[None] | None = None
        self._adds: set[asyncio.Future[None]] = set()
        self.delivered = 0
        self.dead_letters = 0
        self.backlog = 0  # records on disk waiting for the ledger

    async def open(self) -> None:
        self._db = await connect_wal(self._path)
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (request_id TEXT PRIMARY KEY, record BLOB NOT NULL)"
        )
        await self._db.commit()
        # Adds and deletions share commits: one per batch, not one per record.
        self._writer = GroupCommitWriter(self._db, self._write)
        self._writer.start()
        self.backlog = await self.pending()
        if self._metrics is not None and self._report_backlog:
            self._metrics.watch_outbox(lambda: self.backlog)
        self._sender = asyncio.create_task(self._send_loop())

    def add(self, record: metering_pb2.UsageRecord) -> None:
        """Queues the record for the ledger, in place of any record of the same
        request still waiting; returns at once (the disk write follows in the
        background and is awaited at close). No task per record: a request's
        end already costs enough."""
        assert self._writer is not None
        written = self._writer.submit_nowait(_Put(record.request_id, record.SerializeToString()))
        self._adds.add(written)
        written.add_done_callback(self._added_one)

    def _added_one(self, written: asyncio.Future[None]) -> None:
        self._adds.discard(written)
        if written.cancelled() or written.exception() is not None:
            log.error("usage record not written to the outbox", error=repr(written.exception()))
            return
        self._added += 1
        self._empty.clear()
        self._wakeup.set()

    async def _write(
        self, db: aiosqlite.Connection, changes: Sequence[_Put | _Remove]
    ) -> list[None]:
        # The backlog is counted once a batch, not once a record.
        self.backlog = await _write(db, changes)
        return [None] * len(changes)

    async def pending(self) -> int:
        assert self._db is not None
        return await _count(self._db)

    async def drained(self) -> None:
        """Returns once nothing waits for the ledger (records added meanwhile included)."""
        await self._empty.wait()

    async def aclose(self, timeout_s: float) -> int:
        """Writes what was added, tries to deliver it for up to timeout_s, then
        stops; what is still undelivered stays on disk for the next start.
        Returns how many records that is."""
        left = 0
        if self._adds:
            await asyncio.wait(set(self._adds))
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), timeout_s)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._writer is not None:
            await self._writer.aclose()
            self._writer = None
        if self._db is not None:
            left = await self.pending()
            await self._db.close()
            self._db = None
        return left

    async def _send_loop(self) -> None:
        # Whatever fails (the ledger, the disk, a bug), the records stay on
        # disk and the sender goes on with backoff: a bill is never dropped
        # for an error, and the loop never dies of one.
        backoff = Backoff(self._initial_backoff_s, self._max_backoff_s)
        await reconnect_forever(self._drain, backoff, on_error=self._send_failed)

    async def _drain(self, backoff: Backoff) -> bool:
        """Delivers what waits (records left by an earlier run first), then
        waits for more; never done."""
        while True:
            more = await self._send_batch()
            backoff.reset()
            if not more:
                await self._wakeup.wait()
                self._wakeup.clear()

    def _send_failed(self, err: Exception) -> None:
        if isinstance(err, grpc.aio.AioRpcError):
            log.warning("ledger call failed; usage kept in the outbox", code=err.code().name)
        else:
            log.exception("usage outbox failed; retrying", exc_info=err)

    async def _send_batch(self) -> bool:
        """Delivers one batch; False when nothing was waiting."""
        assert self._db is not None
        added_before = self._added
        async with self._db.execute(
            "SELECT request_id, record FROM outbox LIMIT ?", (BATCH,)
        ) as cur:
            rows = [(str(r[0]), bytes(r[1])) for r in await cur.fetchall()]
        if not rows:
            if self._added == added_before:
                self._empty.set()
            return False
        await self._deliver(rows)
        return True

    async def _deliver(self, rows: list[tuple[str, bytes]]) -> None:
        """Sends the rows as one batch; deletes those the ledger stored or
        refused for good, in one transaction. A failed call deletes nothing."""
        assert self._writer is not None
        records: list[metering_pb2.UsageRecord] = []
        sent: list[tuple[str, bytes]] = []
        for request_id, blob in rows:
            try:
                records.append(metering_pb2.UsageRecord.FromString(blob))
                sent.append((request_id, blob))
            except DecodeError:
                # Unreadable now is unreadable for good: set aside at once, once.
                await self._writer.submit(_Remove(((request_id, blob),)))
                self._dead_letter("unreadable usage record in the outbox",
                                  request_id=request_id, record=blob.hex())  # fmt: skip
        if not records:
            return
        reply = await self._stub.RecordUsageBatch(
            metering_pb2.RecordUsageBatchRequest(records=records), timeout=self._call_timeout_s
        )
        # Only rows not replaced meanwhile: a newer record of the request still waits.
        await self._writer.submit(_Remove(tuple(sent)))
        for record, result in zip(records, reply.results, strict=True):
            if result.error.code == grpc.StatusCode.OK.value[0]:
                self.delivered += 1
                continue
            # Refused for good (e.g. the same id with other numbers): keeping it
            # would retry forever; log it whole.
            self._dead_letter("usage record refused by the ledger", code=result.error.code,
                              details=result.error.message, record=str(record))  # fmt: skip

    def _dead_letter(self, event: str, **fields: object) -> None:
        self.dead_letters += 1
        if self._metrics is not None:
            self._metrics.outbox_dead_letters.add(1)
        log.error(event, **fields)
