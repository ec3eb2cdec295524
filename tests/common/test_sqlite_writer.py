"""Group commit on real SQLite files: batching, a failed item alone fails,
close flushes; transactions on one connection run one at a time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiosqlite
import pytest
import pytest_asyncio

from services.common.sqlite_writer import GroupCommitWriter, Transactions, connect_wal


class Numbers:
    """Writes numbers into a table whose CHECK refuses negative ones, and
    remembers the size of every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def write(self, db: aiosqlite.Connection, items: Sequence[int]) -> list[int]:
        self.batches.append(len(items))
        await db.executemany("INSERT INTO numbers (n) VALUES (?)", [(n,) for n in items])
        return [n * 10 for n in items]


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    db = await connect_wal(tmp_path / "sub" / "w.db")
    await db.execute("CREATE TABLE numbers (n INTEGER NOT NULL CHECK (n >= 0))")
    await db.commit()
    yield db
    await db.close()


def committed(path: Path) -> list[int]:
    """What another connection sees: only committed rows."""
    with sqlite3.connect(path) as other:
        return sorted(n for (n,) in other.execute("SELECT n FROM numbers"))


async def test_concurrent_submits_share_commits_and_each_gets_its_result(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    numbers = Numbers()
    writer = GroupCommitWriter(db, numbers.write)
    writer.start()
    results = await asyncio.gather(*(writer.submit(n) for n in range(50)))
    await writer.aclose()
    assert results == [n * 10 for n in range(50)]
    assert sum(numbers.batches) == 50
    assert len(numbers.batches) < 50
    assert committed(tmp_path / "sub" / "w.db") == list(range(50))


async def test_a_batch_is_at_most_max_batch(db: aiosqlite.Connection) -> None:
    numbers = Numbers()
    writer = GroupCommitWriter(db, numbers.write, max_batch=4)
    writer.start()
    await asyncio.gather(*(writer.submit(n) for n in range(10)))
    await writer.aclose()
    assert max(numbers.batches) <= 4


async def test_a_failed_item_fails_its_caller_alone(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    writer = GroupCommitWriter(db, Numbers().write)
    writer.start()
    results = await asyncio.gather(
        *(writer.submit(n) for n in (1, 2, -3, 4)), return_exceptions=True
    )
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], sqlite3.IntegrityError)
    # The writer goes on after a failure.
    assert await writer.submit(5) == 50
    await writer.aclose()
    assert committed(tmp_path / "sub" / "w.db") == [1, 2, 4, 5]


async def test_a_write_that_miscounts_its_results_fails_its_callers(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    async def miscount(db: aiosqlite.Connection, items: Sequence[int]) -> list[int]:
        await Numbers().write(db, items)
        return []

    writer = GroupCommitWriter(db, miscount)
    writer.start()
    with pytest.raises(ValueError, match="1 items written, 0 results"):
        await writer.submit(7)
    await writer.aclose()
    assert committed(tmp_path / "sub" / "w.db") == []


async def test_close_writes_everything_submitted(db: aiosqlite.Connection, tmp_path: Path) -> None:
    writer = GroupCommitWriter(db, Numbers().write)
    writer.start()
    queued = [writer.submit_nowait(n) for n in range(20)]
    await writer.aclose()
    assert committed(tmp_path / "sub" / "w.db") == list(range(20))
    assert [f.result() for f in queued] == [n * 10 for n in range(20)]
    with pytest.raises(RuntimeError, match="not running"):
        writer.submit_nowait(21)


async def test_the_database_is_in_wal_mode(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA journal_mode") as cur:
        assert await cur.fetchone() == ("wal",)


async def test_a_transaction_commits_its_block_or_rolls_it_back(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    transactions = Transactions(db)
    async with transactions.begin() as tx:
        await tx.execute("INSERT INTO numbers (n) VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError):
        async with transactions.begin() as tx:
            await tx.execute("INSERT INTO numbers (n) VALUES (2)")
            await tx.execute("INSERT INTO numbers (n) VALUES (-2)")
    assert committed(tmp_path / "sub" / "w.db") == [1]


async def test_a_failed_batch_undoes_no_other_transaction_on_the_connection(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    transactions = Transactions(db)
    writer = GroupCommitWriter(db, Numbers().write, transactions=transactions)
    writer.start()
    async with transactions.begin() as tx:
        await tx.execute("INSERT INTO numbers (n) VALUES (1)")
        failing = writer.submit_nowait(-1)
        # Round trips to the connection's thread: the writer's turn to run, had
        # it not to wait for this transaction.
        for _ in range(10):
            await tx.execute("SELECT 1")
        assert not failing.done()
        await tx.execute("INSERT INTO numbers (n) VALUES (2)")
    with pytest.raises(sqlite3.IntegrityError):
        await failing
    await writer.aclose()
    assert committed(tmp_path / "sub" / "w.db") == [1, 2]


async def test_a_writer_refuses_transactions_of_another_connection(
    db: aiosqlite.Connection, tmp_path: Path
) -> None:
    async with aiosqlite.connect(tmp_path / "other.db") as other:
        with pytest.raises(ValueError, match="another connection"):
            GroupCommitWriter(db, Numbers().write, transactions=Transactions(other))
