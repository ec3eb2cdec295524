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
the wait: at most `per_caller` held calls per caller and `total` in all;
past either a refusal is answered at once, as without holding. A call whose
client goes away (its task cancelled, or `gone` done) lets go at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.refusals import RefusalBudget
from services.common.errors import ResourceExhaustedError

# Per caller and in all, held calls: past a flood's concurrency (bench/hostile's
# duplicate_id attacker keeps 48 calls in flight), and each holds a call's
# state, its request up to the 5 MiB public message at worst.
DEFAULT_HOLDS_PER_CALLER = 64
DEFAULT_HOLDS = 1024
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
        # Called with the budget's subject for each refusal held, and for each
        # answered at once because the holds were full.
        on_held: Callable[[str], None] = lambda subject: None,
        on_unheld: Callable[[str], None] = lambda subject: None,
    ) -> None:
        self._per_caller = per_caller
        self._total = total
        self._max_hold_s = max_hold_s
        self._on_held = on_held
        self._on_unheld = on_unheld
        # (subject, caller) -> calls held now; only callers with one held.
        self._held: dict[tuple[str, str], int] = {}
        self._held_total = 0

    @property
    def holding(self) -> int:
        """Calls held now."""
        return self._held_total

    async def check(
        self, budget: RefusalBudget, caller: str, gone: asyncio.Future[None] | None = None
    ) -> None:
        """`budget.check(caller)`, its refusal held (see the module)."""
        try:
            budget.check(caller)
        except ResourceExhaustedError as refusal:
            await self.hold(refusal, caller, gone)
            raise

    async def spend(
        self, budget: RefusalBudget, caller: str, gone: asyncio.Future[None] | None = None
    ) -> None:
        """`budget.spend(caller)`, its refusal held (see the module)."""
        try:
            budget.spend(caller)
        except ResourceExhaustedError as refusal:
            await self.hold(refusal, caller, gone)
            raise

    async def hold(
        self,
        refusal: ResourceExhaustedError,
        caller: str,
        gone: asyncio.Future[None] | None = None,
    ) -> None:
        """Returns once `refusal`'s wait is over (at most max_hold_s), at
        once when the holds are full or when `gone` is done or becomes done
        (the transport's sign that the client left)."""
        key = (refusal.subject, caller)
        held = self._held.get(key, 0)
        if held >= self._per_caller or self._held_total >= self._total:
            self._on_unheld(refusal.subject)
            return
        if gone is not None and gone.done():
            return
        self._held[key] = held + 1
        self._held_total += 1
        self._on_held(refusal.subject)
        loop = asyncio.get_running_loop()
        over = loop.create_future()
        # One timer a held call; no task.
        timer = loop.call_later(min(refusal.retry_after_s, self._max_hold_s), _resolve, over)

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
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
