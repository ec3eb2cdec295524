"""Several gateways' usage outboxes in one shared directory, so that a
gateway lost for good loses no usage.

Each gateway keeps its records in a file of its own there and holds an
exclusive flock on it while it runs; the kernel drops the lock when the
process dies, however it dies. Every gateway looks in the directory now and
then for files nobody holds, delivers their records (the ledger is idempotent
by request id, so a record the dead gateway had sent already is not billed
twice) and removes each file once it is empty. The lock is taken on the
database file itself: flock and SQLite's own (POSIX) locks do not meet."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway.metrics import GatewayMetrics
from gateway.outbox import UsageOutbox
from maas.v1 import metering_pb2_grpc

log = structlog.get_logger(__name__)

PREFIX = "gateway-"
SUFFIX = ".db"
# SQLite's files beside a database: its write-ahead log and shared memory.
_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass
class OutboxLock:
    """An exclusive flock on one outbox file, held while it is in use."""

    path: Path
    fd: int

    @classmethod
    def take(cls, path: Path, *, create: bool = False) -> OutboxLock | None:
        """The lock, or None when another process holds it or the file is gone."""
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Removed by the gateway that drained it between our open and our
            # lock: we would hold a lock on a file no longer there.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        return cls(path, fd)

    def release(self) -> None:
        """Lets another gateway take the file (what is in it stays)."""
        os.close(self.fd)

    def remove(self) -> None:
        """Deletes the file (and SQLite's beside it), then lets go: anyone who
        opened it meanwhile finds it gone once they hold the lock."""
        for suffix in ("", *_COMPANIONS):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.release()


def own_outbox(directory: Path) -> OutboxLock:
    """A new outbox file of this gateway's in `directory`, locked."""
    directory.mkdir(parents=True, exist_ok=True)
    # Random, not the host name or pid: containers repeat both.
    lock = OutboxLock.take(directory / f"{PREFIX}{uuid.uuid4().hex}{SUFFIX}", create=True)
    assert lock is not None, "a fresh random name is nobody else's"
    return lock


async def close_own(outbox: UsageOutbox, lock: OutboxLock, timeout_s: float) -> None:
    """Closes this gateway's outbox; removes its file when nothing is left in
    it, else leaves it for the next gateway to adopt."""
    left = await outbox.aclose(timeout_s)
    if left:
        log.warning("usage records left for another gateway", records=left, path=str(lock.path))
        lock.release()
    else:
        lock.remove()


@dataclass
class OutboxAdopter:
    """Finds outbox files in `directory` whose gateway is gone, and delivers them."""

    directory: Path
    stub: metering_pb2_grpc.MeteringAsyncStub
    interval_s: float
    metrics: GatewayMetrics | None = None
    adopted: int = 0
    _draining: dict[Path, UsageOutbox] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Records in adopted files still waiting for the ledger."""
        return sum(outbox.backlog for outbox in self._draining.values())

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.watch_adopted(lambda: self.backlog)
        self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.adopt()
            except OSError as err:  # the directory unreadable for now: look again later
                log.warning("usage outbox directory not scanned", error=str(err))
            await asyncio.sleep(self.interval_s)

    def adopt(self) -> int:
        """Takes every file nobody holds and starts delivering it; how many."""
        taken = 0
        for path in sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}")):
            if path in self._draining:
                continue
            lock = OutboxLock.take(path)
            if lock is None:
                continue  # its gateway runs, or another one adopted it
            outbox = UsageOutbox(path, self.stub, metrics=self.metrics, report_backlog=False)
            self._draining[path] = outbox
            task = asyncio.create_task(self._drain(outbox, lock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            taken += 1
            self.adopted += 1
            if self.metrics is not None:
                self.metrics.outboxes_adopted.add(1)
        return taken

    async def _drain(self, outbox: UsageOutbox, lock: OutboxLock) -> None:
        removed = False
        try:
            await outbox.open()
            log.info("adopted a usage outbox", path=str(lock.path), records=outbox.backlog)
            await outbox.drained()
            # 0: nothing is waiting, so nothing needs time to be delivered.
            if await outbox.aclose(0) == 0:
                lock.remove()
                removed = True
                log.info("adopted usage outbox delivered and removed", path=str(lock.path))
        except Exception:
            log.exception("adopted usage outbox not drained; left for later", path=str(lock.path))
        finally:
            self._draining.pop(lock.path, None)
            if not removed:
                with contextlib.suppress(Exception):
                    await outbox.aclose(0)
                lock.release()

    async def aclose(self) -> None:
        """Stops looking and lets go of the files being drained (what they
        still hold waits for another gateway)."""
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
