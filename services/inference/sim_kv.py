"""The simulated engine's KV cache: fixed-size blocks, prefix caching over
hashed full blocks, LRU eviction of the unreferenced ones (vLLM's
KVCacheManager in miniature)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

# vLLM's default block size on GPU.
BLOCK_SIZE = 16


def block_hashes(tokens: Sequence[int], known: list[int]) -> None:
    """Extends `known` with the chained hashes of the full blocks of `tokens`
    past those already in it: each block's hash covers its parent's, so equal
    hashes mean equal prefixes (as vLLM's hash of parent hash + block tokens).
    Python's hash of a tuple of ints is the same in every process."""
    parent = known[-1] if known else 0
    for start in range(len(known) * BLOCK_SIZE, len(tokens) - BLOCK_SIZE + 1, BLOCK_SIZE):
        parent = hash((parent, tuple(tokens[start : start + BLOCK_SIZE])))
        known.append(parent)


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


class KvBlocks:
    """Blocks are numbered as first used; a block with no reference is free,
    kept (with its hash, if full) in LRU order until it is needed again."""

    def __init__(self, num_blocks: int, *, prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self._caching = prefix_caching
        self._fresh = num_blocks  # never used yet: taken before any cached block
        self._refs: list[int] = []
        self._hash_of: list[int | None] = []
        # Unreferenced blocks, least recently freed first: evicted first.
        self._free: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[int, int] = {}  # block hash -> block
        self.used = 0

    @property
    def free(self) -> int:
        return self._fresh + len(self._free)

    @property
    def usage(self) -> float:
        return self.used / self.num_blocks

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """References and returns the cached blocks of the longest cached
        prefix of `hashes`."""
        if not self._caching:
            return []
        hits: list[int] = []
        for h in hashes:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        for block in hits:
            self._reference(block)
        return hits

    def allocate(self, count: int) -> list[int] | None:
        """`count` blocks, or None (nothing taken) when too few are free."""
        if count > self.free:
            return None
        taken: list[int] = []
        for _ in range(count):
            if self._fresh:
                self._fresh -= 1
                block = len(self._refs)
                self._refs.append(0)
                self._hash_of.append(None)
            else:
                block, _ = self._free.popitem(last=False)
                evicted = self._hash_of[block]
                if evicted is not None:
                    self._hash_of[block] = None
                    if self._cached.get(evicted) == block:
                        del self._cached[evicted]
            self._refs[block] = 1
            self.used += 1
            taken.append(block)
        return taken

    def release(self, blocks: Sequence[int]) -> None:
        """Drops one reference from each; a request's last blocks are freed
        first, so they are evicted before its shared prefix (as vLLM does)."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self.used -= 1
                self._free[block] = None

    def register(self, block: int, block_hash: int) -> None:
        """A block just filled: later requests with the same prefix may reuse it."""
        if self._caching and block_hash not in self._cached:
            self._cached[block_hash] = block
            self._hash_of[block] = block_hash

    def _reference(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._free[block]
            self.used += 1
        self._refs[block] += 1
