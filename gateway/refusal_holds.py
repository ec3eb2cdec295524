"""Refusals held for as long as they tell the caller to wait.

A caller past its budget (refusals.py) is refused before it costs a check or
a call, but a refusal answered at once still costs a call's worth of the
event loop every tenant shares, and a closed-loop client that ignores the
wait just sends again: eight such clients made the gateway answer some 2,450
refusals a second (bench/hostile.py). So the refusal of a spent budget is
held: answered only once the wait its RetryInfo names has passed (at most
`max_hold_s`), and the caller's loop runs at the budget's pace instead of the
gateway's. A caller that waits as told is never refused this way, so never
held.

Holding costs a timer and the call's state (its request, already read) for
the wait: at most `per_caller` held calls per caller, `total` in all, and
`total_bytes` of their requests together (a flood of big requests is held
too, within what the gateway can keep); past any of these a refusal is
answered at once, as without holding. A hold ends by half the caller's own
deadline, so that it reads the RetryInfo rather than DEADLINE_EXCEEDED. A
call whose client goes away (its task cancelled, or `gone` done) lets go at
once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.refusals import RefusalBudget

if TYPE_CHECKING:
    from gateway.core import Caller
from services.common.errors import ResourceExhaustedError

# Per caller and in all, held calls: past a flood's concurrency (bench/hostile's
# duplicate_id attacker keeps 48 calls in flight).
DEFAULT_HOLDS_PER_CALLER = 64
DEFAULT_HOLDS = 1024
# The held calls' requests together: room for a flood's worth of 200 kB
# constraints (bench/hostile's huge_constraint: 8 clients), a small part of a
# gateway's memory.
DEFAULT_HOLD_BYTES = 64 * 1024 * 1024
# A hold ends by half the caller's deadline (as it was when the call began;
# the checks before the hold take some of it), less a little: the answer then
# reaches even a starved client before its deadline does, and half a
# deadline still slows a loop that ignores the wait.
DEADLINE_MARGIN_S = 0.05
DEADLINE_SHARE = 0.5
# The budget's wait can be long (refills of a few a second, or a bucket run
# deep by many refusals in flight at once); held longer than this, the
# answer would outlast common client deadlines and proxies' idle timeouts,
# and a slot is kept past the point where it slows the caller any further.
DEFAULT_MAX_HOLD_S = 2.0


class RefusalHolds:
    def __init__(
        self,
        *,
        per_caller: int = DEFAULT_HOLDS_PER_CALLER,
        total: int = DEFAULT_HOLDS,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
        total_bytes: int = DEFAULT_HOLD_BYTES,
        # Called with the budget's subject for each refusal held, and for each
        # answered at once because the holds were full.
        on_held: Callable[[str], None] = lambda subject: None,
        on_unheld: Callable[[str], None] = lambda subject: None,
    ) -> None:
        self._per_caller = per_caller
        self._total = total
        self._max_hold_s = max_hold_s
        self._total_bytes = total_bytes
        self._held_bytes = 0
        self._on_held = on_held
        self._on_unheld = on_unheld
        # (subject, caller) -> calls held now; only callers with one held.
        self._held: dict[tuple[str, str], int] = {}
        self._held_total = 0

    @property
    def holding(self) -> int:
        """Calls held now."""
        return self._held_total

    async def check(self, budget: RefusalBudget, key: str, call: Caller | None = None) -> None:
        """`budget.check(key)`, its refusal held (see the module)."""
        try:
            budget.check(key)
        except ResourceExhaustedError as refusal:
            await self.hold(refusal, key, call)
            raise

    async def spend(self, budget: RefusalBudget, key: str, call: Caller | None = None) -> None:
        """`budget.spend(key)`, its refusal held (see the module)."""
        try:
            budget.spend(key)
        except ResourceExhaustedError as refusal:
            await self.hold(refusal, key, call)
            raise

    async def hold(
        self, refusal: ResourceExhaustedError, caller: str, call: Caller | None = None
    ) -> None:
        """Returns once `refusal`'s wait is over (at most max_hold_s, and
        before the call's deadline), at once when the holds are full (in
        calls or in bytes), or `call.gone` is done or becomes done (the
        transport's sign that the client left)."""
        key = (refusal.subject, caller)
        held = self._held.get(key, 0)
        size = 0 if call is None else call.request_bytes
        full = self._held_total >= self._total or self._held_bytes + size > self._total_bytes
        if held >= self._per_caller or full:
            self._on_unheld(refusal.subject)
            return
        wait = min(refusal.retry_after_s, self._max_hold_s)
        if call is not None and call.deadline_s is not None:
            wait = min(wait, call.deadline_s * DEADLINE_SHARE - DEADLINE_MARGIN_S)
        gone = None if call is None else call.gone
        if wait <= 0 or (gone is not None and gone.done()):
            return
        self._held[key] = held + 1
        self._held_total += 1
        self._held_bytes += size
        self._on_held(refusal.subject)
        loop = asyncio.get_running_loop()
        over = loop.create_future()
        # One timer a held call; no task.
        timer = loop.call_later(wait, _resolve, over)

        def over_on_gone(_: asyncio.Future[None]) -> None:
            _resolve(over)

        if gone is not None:
            gone.add_done_callback(over_on_gone)
        try:
            await over
        finally:
            timer.cancel()
            if gone is not None:
                gone.remove_done_callback(over_on_gone)
            self._held_total -= 1
            self._held_bytes -= size
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
