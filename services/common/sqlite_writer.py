"""Group commit on one SQLite connection (the ledger's usage records, the
gateway's usage outbox).

Callers submit items; whatever arrives while one batch is being written goes
into the next, written by one function and committed in one transaction. One
caller waits no longer than it would alone; many share the cost of a commit.
Each caller gets its own item's result, only once its batch is committed.
When a batch fails, each of its items is written again alone, so one bad item
fails its own caller and loses no one else's write.

A connection has one transaction at a time, whoever's statements it holds:
everything that writes on it (the writer's batches and any other method)
goes through one `Transactions`, so a rollback undoes no one else's
statement and a commit lands no one else's half-done change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Generic, TypeAlias, TypeVar

import aiosqlite

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Writes `items` on the connection without committing; one result per item, in order.
WriteBatch: TypeAlias = Callable[
    [aiosqlite.Connection, Sequence[ItemT]], Awaitable[Sequence[ResultT]]
]


async def connect_wal(path: Path) -> aiosqlite.Connection:
    """Opens (creating its folder) a database in WAL mode with `synchronous=NORMAL`:
    a commit survives a crash of this process, the failure a service must
    survive; only an OS crash can lose the last commits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    return db


class Transactions:
    """Write transactions on one connection, one at a time."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[aiosqlite.Connection]:
        """Yields the connection once no other transaction is open; commits
        what the block wrote, or rolls it back if the block (or the commit) fails."""
        async with self._lock:
            try:
                yield self.db
                await self.db.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.db.rollback()
                raise


class GroupCommitWriter(Generic[ItemT, ResultT]):
    # Bounds one transaction, and so the wait of the batch's last caller.
    MAX_BATCH = 512

    def __init__(
        self,
        db: aiosqlite.Connection,
        write: WriteBatch[ItemT, ResultT],
        *,
        max_batch: int = MAX_BATCH,
        transactions: Transactions | None = None,
    ) -> None:
        """`transactions`: those of every other writer on `db`, when there are others."""
        if transactions is not None and transactions.db is not db:
            raise ValueError("transactions of another connection")
        self._transactions = transactions or Transactions(db)
        self._write = write
        self._max_batch = max_batch
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        """Writes what was submitted, then stops."""
        if self._task is not None:
            self._closing = True
            self._wakeup.set()
            await self._task
            self._task = None

    async def submit(self, item: ItemT) -> ResultT:
        """Writes `item` in the next batch; returns its result once committed."""
        # Shielded: a caller that goes away does not abort the write.
        return await asyncio.shield(self.submit_nowait(item))

    def submit_nowait(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queues `item` for the next batch; the future holds its result once
        committed. Refused once `aclose` has begun: nothing would write it."""
        if self._task is None or self._closing:
            raise RuntimeError("the writer is not running")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._write_batch(batch)
            if self._closing:
                return

    async def _write_batch(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._commit([item for item, _ in batch])
        except Exception as err:
            if len(batch) == 1:
                _settle(batch[0][1], err)
                return
            # Which item failed is unknown: each goes again in its own transaction.
            for entry in batch:
                await self._write_batch([entry])
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)

    async def _commit(self, items: list[ItemT]) -> Sequence[ResultT]:
        async with self._transactions.begin() as db:
            results = await self._write(db, items)
            if len(results) != len(items):
                raise ValueError(f"{len(items)} items written, {len(results)} results")
        return results


def _settle(future: asyncio.Future[ResultT], outcome: ResultT | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
