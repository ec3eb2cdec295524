"""A replica's slots for tenants' private adapters: which are loaded, which
requests use them, and which to unload on a miss (the least recently used
one no running request uses).

A miss fetches the adapter's files and loads them once, however many
requests ask for it meanwhile (single flight); it takes its slot at once,
so concurrent misses for other adapters count it as full. When every slot
holds an adapter with requests running, a miss is UNAVAILABLE: the router
retries another replica before the first chunk.

The slots are the replica's one record of which adapters are loaded and in
what order of use: the engine loads and unloads what they tell it, and the
replica's load reports read them (load_report.py)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from services.common.changes import ChangeSignal
from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.inference.spec import ADAPTER_SLOTS_BUSY_REASON

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FetchedAdapter:
    """An adapter's files on local disk and the base model it was trained on."""

    path: Path
    base_model: str
    # Removes the files once the adapter is unloaded (None: they stay).
    discard: Callable[[], None] | None = None


# Fetches an adapter's files by id: NotFoundError for an unknown id.
AdapterFetch = Callable[[str], Awaitable[FetchedAdapter]]


class AdapterEngine(Protocol):
    """The engine primitives the slots drive."""

    async def load_adapter(self, adapter_id: str, path: str) -> None: ...

    async def unload_adapter(self, adapter_id: str) -> None: ...


@dataclass(eq=False)
class _Slot:
    adapter_id: str
    # Requests holding it: running on it, or waiting for its load.
    users: int = 0
    # Resolves once the adapter is loaded (or failed to load).
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    files: FetchedAdapter | None = None


class AdapterSlots:
    """At most `slots` private adapters loaded in `engine` at once."""

    def __init__(
        self, slots: int, engine: AdapterEngine, fetch: AdapterFetch, *, base_model: str
    ) -> None:
        self._capacity = slots
        self._engine = engine
        self._fetch = fetch
        self._base_model = base_model
        # Least recently used first.
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        # Loads and unloads reach the engine one at a time, in the order decided.
        self._engine_ops = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loads = 0
        # Notified whenever `loaded` or `loads` changes.
        self.changes = ChangeSignal()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def loaded(self) -> tuple[str, ...]:
        """Ids of the loaded adapters, most recently used first."""
        return tuple(
            s.adapter_id
            for s in reversed(self._slots.values())
            if s.ready.done() and not s.ready.cancelled() and s.ready.exception() is None
        )

    def users(self, adapter_id: str) -> int:
        slot = self._slots.get(adapter_id)
        return slot.users if slot is not None else 0

    @asynccontextmanager
    async def use(self, adapter_id: str) -> AsyncIterator[None]:
        """Holds `adapter_id` loaded for one request, loading it on a miss."""
        await self.acquire(adapter_id)
        try:
            yield
        finally:
            self.release(adapter_id)

    async def acquire(self, adapter_id: str) -> None:
        """Marks `adapter_id` used by one more request, once it is loaded.
        The caller must `release` it after a normal return (not after an error)."""
        if self._capacity <= 0:
            raise FailedPreconditionError("this replica serves no private adapters")
        slot = self._slots.get(adapter_id)
        if slot is None:
            slot = self._miss(adapter_id)
        elif next(reversed(self._slots)) != adapter_id:
            self._slots.move_to_end(adapter_id)
            self.changes.notify()
        slot.users += 1
        try:
            # shield: a caller giving up leaves the load running for the others.
            await asyncio.shield(slot.ready)
        except BaseException:
            slot.users -= 1
            raise

    def release(self, adapter_id: str) -> None:
        slot = self._slots.get(adapter_id)
        if slot is not None and slot.users > 0:
            slot.users -= 1

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _miss(self, adapter_id: str) -> _Slot:
        """Takes a slot for `adapter_id` now (evicting, in this same step,
        the least recently used idle adapter if none is free) and starts its load."""
        victim: _Slot | None = None
        if len(self._slots) >= self._capacity:
            victim = next(
                (s for s in self._slots.values() if s.users == 0 and s.ready.done()),
                None,
            )
            if victim is None:
                raise UnavailableError(
                    f"all {self._capacity} adapter slots hold adapters with requests running",
                    reason=ADAPTER_SLOTS_BUSY_REASON,
                )
            del self._slots[victim.adapter_id]
            self.changes.notify()
        slot = _Slot(adapter_id)
        self._slots[adapter_id] = slot
        task = asyncio.create_task(self._load(slot, victim), name=f"load adapter {adapter_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return slot

    async def _load(self, slot: _Slot, victim: _Slot | None) -> None:
        adapter_id = slot.adapter_id
        try:
            if victim is not None:
                async with self._engine_ops:
                    await self._engine.unload_adapter(victim.adapter_id)
                if victim.files is not None and victim.files.discard is not None:
                    await asyncio.to_thread(victim.files.discard)
                log.info("adapter unloaded", adapter_id=victim.adapter_id, for_adapter=adapter_id)
            fetched = slot.files = await self._fetch(adapter_id)
            if fetched.base_model != self._base_model:
                raise FailedPreconditionError(
                    f"adapter {adapter_id!r} is for model {fetched.base_model!r};"
                    f" this replica serves {self._base_model!r}"
                )
            async with self._engine_ops:
                await self._engine.load_adapter(adapter_id, str(fetched.path))
        except BaseException as err:
            if self._slots.get(adapter_id) is slot:
                del self._slots[adapter_id]
            if not slot.ready.done():
                slot.ready.set_exception(_for_caller(adapter_id, err))
                # Retrieved here too: with every caller gone, nobody else would.
                with suppress(BaseException):
                    slot.ready.exception()
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        self.loads += 1
        log.info("adapter loaded", adapter_id=adapter_id, loads=self.loads)
        slot.ready.set_result(None)
        self.changes.notify()


def _for_caller(adapter_id: str, err: BaseException) -> BaseException:
    """What the requests waiting for a failed load get: the mesh's own errors
    as they are; anything else (a bad file, an engine refusing it) as the
    adapter's problem, never hidden as a replica fault."""
    if isinstance(
        err, NotFoundError | FailedPreconditionError | UnavailableError | InvalidArgumentError
    ):
        return err
    if isinstance(err, asyncio.CancelledError):
        return UnavailableError("the replica is stopping")
    return FailedPreconditionError(f"adapter {adapter_id!r} could not be loaded: {err}")
