"""The tenants of one model that share its slots: those running, waiting, or
seen in the last `memory_s` seconds (a light tenant between two requests
still counts). Kept as counts that change with each event, so a fair share
costs the same with 10 tenants or 10,000; a scan over them on every
admission made the router's cost grow with the tenants."""

from __future__ import annotations

from collections import Counter, OrderedDict


class ActiveTenants:
    def __init__(self, *, memory_s: float, max_remembered: int) -> None:
        self._memory_s = memory_s
        self._max_remembered = max_remembered
        # When each tenant last asked, oldest first: the clock only moves on,
        # so the ones to forget are always at the front.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._running: Counter[str] = Counter()
        self._waiting: set[str] = set()
        # Each tenant in any of the three, with how many of them hold it.
        self._holds: Counter[str] = Counter()

    def count(self, now: float) -> int:
        """Tenants running, waiting, or seen since `now - memory_s`."""
        recent = now - self._memory_s
        while self._seen:
            tenant, at = next(iter(self._seen.items()))
            if at >= recent:
                break
            del self._seen[tenant]
            self._let_go(tenant)
        return len(self._holds)

    def saw(self, tenant: str, now: float) -> None:
        """`tenant` asked at `now`."""
        if tenant in self._seen:
            self._seen.move_to_end(tenant)
        else:
            self._hold(tenant)
        self._seen[tenant] = now
        if len(self._seen) > self._max_remembered:
            # Keep memory bounded: forget the half seen longest ago.
            for _ in range(len(self._seen) // 2):
                forgotten, _ = self._seen.popitem(last=False)
                self._let_go(forgotten)

    def running(self, tenant: str) -> int:
        """Requests of `tenant` holding a slot."""
        return self._running.get(tenant, 0)

    def started(self, tenant: str) -> None:
        self._running[tenant] += 1
        if self._running[tenant] == 1:
            self._hold(tenant)

    def ended(self, tenant: str) -> None:
        self._running[tenant] -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]
            self._let_go(tenant)

    def waiting(self, tenant: str, waits: bool) -> None:
        """Whether `tenant` has requests in the model's queue now."""
        if waits and tenant not in self._waiting:
            self._waiting.add(tenant)
            self._hold(tenant)
        elif not waits and tenant in self._waiting:
            self._waiting.discard(tenant)
            self._let_go(tenant)

    def _hold(self, tenant: str) -> None:
        self._holds[tenant] += 1

    def _let_go(self, tenant: str) -> None:
        self._holds[tenant] -= 1
        if self._holds[tenant] <= 0:
            del self._holds[tenant]
