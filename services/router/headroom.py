"""Free slots kept for light tenants (under their fair share, and not a
flood: a tenant that had to queue while holding its share is one until its
queue empties), sized by how many they hold, so a flood cannot take back the
slots their ending requests hand back.

The fixed reserve (a share of each replica's slots) holds a light tenant's
first requests; but a light request that ends frees a slot the flood takes
at once, and new light requests eat into the reserve until the flood's own
requests end. With equal-length requests the flood's end together, seconds
apart, and a light tenant that holds about as many slots as the reserve
waits for them. Here the flood may fill a slot only while the slots left
free cover `beta * sqrt(held)`, `held` being the light tenants' slots: the
margin of square-root staffing (Halfin and Whitt) for Poisson arrivals,
whose count in flight varies by about its square root. Its cost: about that
many slots idle while light tenants run, none while they do not. Every event
costs the same whatever the number of tenants."""

from __future__ import annotations

import math
from collections import Counter


class LightHeadroom:
    def __init__(self, beta: float) -> None:
        self._beta = beta
        self._by_tenant: Counter[str] = Counter()
        self._floods: set[str] = set()
        self.held = 0

    def is_light(self, tenant: str) -> bool:
        return tenant not in self._floods

    def started(self, tenant: str) -> None:
        """A light tenant took a slot."""
        self._by_tenant[tenant] += 1
        self.held += 1

    def ended(self, tenant: str) -> None:
        """A request of `tenant` ended: one of its light slots, if it holds any."""
        if self._by_tenant[tenant] > 0:
            self._by_tenant[tenant] -= 1
            self.held -= 1
        if self._by_tenant[tenant] <= 0:
            del self._by_tenant[tenant]

    def flooding(self, tenant: str) -> None:
        """`tenant` holds its share and must queue for more: a flood, whose
        first requests (granted while under its share) stop counting as light."""
        self._floods.add(tenant)
        self.held -= self._by_tenant.pop(tenant, 0)

    def drained(self, tenant: str) -> None:
        """`tenant` has nothing queued any more."""
        self._floods.discard(tenant)

    def to_keep_free(self) -> int:
        """Free slots the other tenants must leave."""
        return round(self._beta * math.sqrt(self.held))
