"""The gateway's small TTL cache: entries hold for their TTL, the least
recently used go first past the bound, and a value looked up before a
forget is not kept after it (it may predate the change forgotten)."""

from __future__ import annotations

from gateway.ttl_cache import Cached, TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_hold_for_their_ttl_and_the_cache_keeps_its_bound() -> None:
    clock = Clock()
    cache: TtlCache[str, int | None] = TtlCache(ttl_s=5.0, max_entries=2, clock=clock)
    cache.put("miss", None, cache.stamp())
    assert cache.get("miss") == Cached(None)  # a remembered miss is a value
    assert cache.get("never") is None
    clock.now = 5.0
    assert cache.get("miss") is None
    for key, value in (("a", 1), ("b", 2)):
        cache.put(key, value, cache.stamp())
    assert cache.get("a") == Cached(1)  # "a" used last: "b" goes first
    cache.put("c", 3, cache.stamp())
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (Cached(1), None, Cached(3))
    assert len(cache) == 2


def test_a_lookup_that_raced_a_forget_is_not_kept() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=5.0, max_entries=8)
    stamp = cache.stamp()  # a lookup starts...
    cache.forget("a")  # ...the value changes here meanwhile...
    cache.put("a", 1, stamp)  # ...and the lookup's (maybe older) answer arrives
    assert cache.get("a") is None
    cache.put("a", 2, cache.stamp())
    assert cache.get("a") == Cached(2)
