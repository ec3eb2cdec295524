"""A replica's load as it reports it (GetLoad, WatchLoad): the engine's
counts, with the private adapters as its slots hold them. The slots are the
one record of which adapters are loaded and in what order of use; an engine
only loads and unloads what they tell it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

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
    """The current load, then every change of the engine's or of the slots'."""
    async with aclosing(engine.watch_load()) as engine_loads:
        if slots is None:
            async for load in engine_loads:
                yield load
            return
        load = await anext(engine_loads)
        next_load = asyncio.ensure_future(anext(engine_loads))
        # The event is taken now, before the snapshot below reads the slots:
        # a change after that read sets it, however late the task starts.
        slots_changed = asyncio.ensure_future(slots.changes.next.wait())
        last: LoadSnapshot | None = None
        try:
            while True:
                now = _with_adapters(load, slots)
                if now != last:
                    yield now
                    last = now
                await asyncio.wait((next_load, slots_changed), return_when=asyncio.FIRST_COMPLETED)
                if next_load.done():
                    try:
                        load = next_load.result()
                    except StopAsyncIteration:
                        return
                    next_load = asyncio.ensure_future(anext(engine_loads))
                if slots_changed.done():
                    slots_changed = asyncio.ensure_future(slots.changes.next.wait())
        finally:
            # The engine's stream is closed (aclosing) only once no task reads it.
            next_load.cancel()
            slots_changed.cancel()
            await asyncio.gather(next_load, slots_changed, return_exceptions=True)
