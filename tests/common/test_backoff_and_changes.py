"""The shared reconnect loop and change broadcaster, without gRPC."""

from __future__ import annotations

import asyncio

import pytest

from services.common.backoff import Backoff, reconnect_forever
from services.common.changes import ChangeSignal


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.001, max_s=0.004)
    seen = []
    for _ in range(4):
        seen.append(backoff.next_s)
        asyncio.run(backoff.sleep())
    assert seen == [0.001, 0.002, 0.004, 0.004]
    backoff.reset()
    assert backoff.next_s == 0.001


def test_backoff_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=0.5, max_s=0.1)


async def test_reconnect_retries_errors_and_ended_sessions_until_done() -> None:
    errors: list[Exception] = []
    outcomes: list[object] = [ConnectionError("down"), False, True]
    calls = 0

    async def session(backoff: Backoff) -> bool:
        nonlocal calls
        calls += 1
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, bool)
        return outcome

    await reconnect_forever(session, Backoff(0.001, 0.002), on_error=errors.append)
    assert calls == 3
    assert [str(e) for e in errors] == ["down"]


async def test_reconnect_lets_unlisted_errors_through() -> None:
    async def session(backoff: Backoff) -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await reconnect_forever(
            session, Backoff(0.001, 0.002), on_error=lambda e: None, errors=(ConnectionError,)
        )


async def test_change_signal_wakes_waiters_of_the_next_change_only() -> None:
    changes = ChangeSignal()
    before = changes.next
    waiter = asyncio.create_task(changes.wait())
    await asyncio.sleep(0)
    changes.notify()
    await asyncio.wait_for(waiter, 1)
    assert before.is_set()
    assert not changes.next.is_set()
