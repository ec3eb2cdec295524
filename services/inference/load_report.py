"""A replica's load as it reports it (GetLoad, WatchLoad): the engine's
counts, with the private adapters as its slots hold them. The slots are the
one record of which adapters are loaded and in what order of use; an engine
only loads and unloads what they tell it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from services.common.changes import ChangeSignal
from services.inference.adapter_slots import AdapterSlots
from services.inference.engine import Engine, LoadSnapshot


def replica_load(engine: Engine, slots: AdapterSlots | None) -> LoadSnapshot:
    load = engine.load()
    return load if slots is None else _with_adapters(load, slots)


def _with_adapters(load: LoadSnapshot, slots: AdapterSlots) -> LoadSnapshot:
    return replace(load, loaded_adapters=slots.loaded, adapter_loads=slots.loads)


async def watch_replica_load(
    engine: Engine, slots: AdapterSlots | None
) -> AsyncGenerator[LoadSnapshot, None]:
    """The current load, then every change of the engine's or of the slots'
    (changes that come faster than the reader coalesce: it gets the latest)."""
    if slots is None:
        async with aclosing(engine.watch_load()) as loads:
            async for load in loads:
                yield load
        return
    # Two followers, one for each source, wake the reader; it reads both
    # anew each time, so a change between its reads is never lost.
    wake = asyncio.Event()
    engine_load: list[LoadSnapshot] = []

    async def follow_engine() -> None:
        try:
            async with aclosing(engine.watch_load()) as loads:
                async for load in loads:
                    engine_load[:] = [load]
                    wake.set()
        finally:
            wake.set()  # the reader learns of its end, or its error

    async def follow_slots(changes: ChangeSignal) -> None:
        while True:
            await changes.wait()
            wake.set()

    engine_task = asyncio.create_task(follow_engine())
    slots_task = asyncio.create_task(follow_slots(slots.changes))
    last: LoadSnapshot | None = None
    try:
        while True:
            await wake.wait()
            wake.clear()
            if engine_task.done():
                engine_task.result()
                return
            if not engine_load:
                continue
            now = _with_adapters(engine_load[0], slots)
            if now != last:
                yield now
                last = now
    finally:
        engine_task.cancel()
        slots_task.cancel()
        await asyncio.gather(engine_task, slots_task, return_exceptions=True)
