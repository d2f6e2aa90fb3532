"""Automatic prefix caching of the reference block manager: ``rust/src/block_manager/prefix.rs`` line for line.

Full KV blocks are named by a chained content hash, ``h_i = hash(h_{i-1}, tokens of block i)`` (Fx,
64-bit, ``ROOT_HASH`` before the first block), so one hash names the whole prefix up to its block.
``cache_full_blocks`` registers a sequence's full blocks once their K/V is computed; ``allocate_cached``
reuses the longest registered chain (ref counts + 1) and allocates the rest. A registered block whose
ref count reaches 0 keeps its K/V and becomes evictable (least recently released first); the pool
counts it as free and evicts it (dropping its hash) only when the allocator itself is empty. The
block holding the last token is never reused: its logits must be computed, and nobody writes into a
block others read. Limit: Fx is not collision resistant (a crafted prompt could alias a prefix).
"""

from __future__ import annotations

from collections import OrderedDict

from . import limits as lim
from .errors import out_of_blocks

ROOT_HASH = 0x243F6A8885A308D3
_SEED = 0x517CC1B727220A95
_MASK = (1 << 64) - 1
OFF = "prefix caching is off: construct the BlockManager with prefix_caching=True"


def block_hash(parent: int, tokens) -> int:
    """The chained content hash of one full block (``fxhash::FxHasher`` over u64 words)."""
    h = 0
    for x in (parent, *tokens):
        h = ((((h << 5) | (h >> 59)) & _MASK) ^ x) * _SEED & _MASK
    return h


class PrefixCache:
    """Hash -> block for registered blocks; the evictable ones in release order (``lru``)."""

    __slots__ = ("by_hash", "hash_of", "lru", "queries", "hits", "evictions")

    def __init__(self, num_blocks: int):
        self.by_hash: dict[int, int] = {}
        self.hash_of: list[int | None] = [None] * num_blocks
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.queries = self.hits = self.evictions = 0

    def evict_one(self) -> int | None:
        if not self.lru:
            return None
        b, _ = self.lru.popitem(last=False)
        del self.by_hash[self.hash_of[b]]
        self.hash_of[b] = None
        self.evictions += 1
        return b


class PrefixCaching:
    """The block manager's prefix-caching half (mixed into ``reference_block_manager.BlockManager``)."""

    _prefix: PrefixCache | None

    @property
    def prefix_caching(self) -> bool:
        return self._prefix is not None

    @property
    def num_free_gpu_blocks(self) -> int:
        """The allocator's free blocks and the evictable cached ones."""
        return self._gpu.num_free_blocks + (len(self._prefix.lru) if self._prefix is not None else 0)

    def _take_block(self) -> int:
        if self._prefix is not None and self._gpu.num_free_blocks == 0:
            b = self._prefix.evict_one()
            if b is not None:
                self._gpu.free(b, 1)
        return self._gpu.allocate(1)

    def _release_block(self, b: int) -> None:
        if self._prefix is not None and self._prefix.hash_of[b] is not None:
            self._prefix.lru[b] = None
        else:
            self._gpu.free(b, 1)

    def _is_evictable(self, b: int) -> bool:
        return self._prefix is not None and self._prefix.hash_of[b] is not None and self._gpu_refs[b] == 0

    def _evict_for(self, n: int) -> None:
        while self._gpu.num_free_blocks < n:
            self._gpu.free(self._prefix.evict_one(), 1)

    def allocate_cached(self, seq_id: int, token_ids) -> tuple[list[int], int]:
        seq_id = lim.SEQ_ID.check(seq_id)
        tokens = lim.check_tokens(token_ids)
        cache = self._prefix
        if cache is None:
            raise ValueError(OFF)
        self._check_new_id(seq_id)
        bs, n, parent = self.block_size, len(tokens), ROOT_HASH
        hashes, table = [], []
        for i in range(max(n - 1, 0) // bs):
            h = block_hash(parent, tokens[i * bs:(i + 1) * bs])
            b = cache.by_hash.get(h)
            if b is None:
                break
            hashes.append(h)
            table.append(b)
            parent = h
        revived = sum(1 for b in table if self._gpu_refs[b] == 0)
        fresh, free = self._blocks_for(n) - len(table), self.num_free_gpu_blocks
        if fresh + revived > free:
            raise out_of_blocks(fresh + revived, free, "gpu")
        for b in table:
            if self._gpu_refs[b] == 0:
                del cache.lru[b]
            self._gpu_refs[b] += 1
        cached = len(table) * bs
        cache.queries += n
        cache.hits += cached
        table.extend(self._take_runs(fresh))
        seq = self._new_seq(list(table), n, self._admit(seq_id))
        seq.hashes = hashes
        self._seqs[seq_id] = seq
        return table, cached

    def cache_full_blocks(self, seq_id: int, token_ids) -> int:
        seq_id = lim.SEQ_ID.check(seq_id)
        tokens = lim.check_tokens(token_ids)
        cache = self._prefix
        if cache is None:
            raise ValueError(OFF)
        seq = self._gpu_seq(seq_id)
        if len(tokens) > seq.num_tokens:
            raise ValueError(f"{len(tokens)} token ids for sequence {seq_id}, which holds {seq.num_tokens}: "
                             "pass its computed tokens")
        bs, registered = self.block_size, 0
        for i in range(len(seq.hashes), len(tokens) // bs):
            parent = seq.hashes[-1] if seq.hashes else ROOT_HASH
            h = block_hash(parent, tokens[i * bs:(i + 1) * bs])
            seq.hashes.append(h)
            b = seq.table[i]
            if cache.hash_of[b] is None and h not in cache.by_hash:
                cache.hash_of[b] = h
                cache.by_hash[h] = b
                registered += 1
        return registered

    def _prefix_stats(self) -> dict[str, float]:
        c = self._prefix
        if c is None:
            return {}
        return {"prefix_queries": c.queries, "prefix_hits": c.hits,
                "prefix_hit_rate": 0.0 if c.queries == 0 else c.hits / c.queries,
                "cached_blocks": len(c.by_hash), "evictable_blocks": len(c.lru), "evictions": c.evictions}

    def _prefix_problems(self) -> list[str]:
        c = self._prefix
        if c is None:
            return []
        problems = []
        for i, h in enumerate(c.hash_of):
            evictable = h is not None and self._gpu_refs[i] == 0
            listed = i in c.lru
            if listed != evictable:
                problems.append(f"gpu block {i}: evictable={str(evictable).lower()} but listed={str(listed).lower()}")
            if h is not None and c.by_hash.get(h) != i:
                problems.append(f"gpu block {i}: its hash does not map back to it")
        if len(c.by_hash) != sum(1 for h in c.hash_of if h is not None):
            problems.append("hash map size differs from the cached blocks")
        return problems
