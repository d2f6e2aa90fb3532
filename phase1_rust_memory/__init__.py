"""Phase 1 — the KV-cache memory manager, in Rust (pyo3 + maturin) with a pure-Python reference.

The contract (what phase 4's scheduler and model runner use). Every implementation — ``framework``,
``solution``, ``reference``, or a learner's module — exposes these names with these signatures:

``BlockManager(num_gpu_blocks, block_size=16, *, num_cpu_blocks=0, watermark=0.01, policy="refuse",
allocator="buddy", prefix_caching=False)``
    Sequence id (0 <= id < 2**64) -> block table over a pool of ``num_gpu_blocks`` KV blocks of
    ``block_size`` token slots (and ``num_cpu_blocks`` CPU blocks for swapping). Slot ``s`` of the KV
    cache is block ``s // block_size``, offset ``s % block_size``.

    - ``can_allocate(num_tokens) -> bool``: the prompt fits and ``watermark`` × pool stays free.
    - ``allocate(seq_id, num_tokens) -> list[int]``: blocks for a new sequence's prompt (longest
      contiguous runs first); never preempts. Returns the block table.
    - ``append_slot(seq_id) -> (slot, copy | None)``: room for one more token; ``copy`` is a
      ``(src, dst)`` block copy to do first when the last block was shared (copy-on-write).
      Always refuses (``OutOfBlocks``) when no block is free.
    - ``can_append(seq_ids) -> bool``; ``step(seq_ids) -> StepResult``: the batched per-step call —
      one slot for each sequence, applying the policy when blocks run out. ``StepResult.slots`` has
      one slot per appended sequence (``seq_ids`` in order, preempted ones left out),
      ``.new_blocks`` the ``(seq_id, block)`` pairs newly given, ``.copies`` the ``(src, dst)``
      copy-on-write copies to do before the model writes, ``.preempted`` the victims.
    - ``fork(parent_id, child_id)``: the child shares all the parent's blocks (ref counts + 1).
    - ``free(seq_id)``: drop the sequence; blocks whose ref count reaches 0 return to the pool.
    - ``swap_out(seq_ids) -> list[(gpu, cpu)]`` / ``swap_in(seq_ids) -> list[(cpu, gpu)]`` /
      ``can_swap_in(seq_ids)``: move a group between pools; do the returned copies at once.
    - ``block_table(seq_id)``, ``num_tokens(seq_id)``, ``is_swapped(seq_id)``, ``seq_id in m``,
      ``seq_ids()``, ``running_seq_ids()`` (admission order; preemption takes the last),
      ``ref_count(block)``, ``num_free_gpu_blocks``, ``num_free_cpu_blocks``, ``watermark_blocks``,
      ``stats() -> dict`` (free/used blocks, stored tokens, unused slots, fragmentation, contiguity,
      copy-on-write, preemption and swap counters), ``check_invariants() -> list[str]``.
    - Prefix caching (``prefix_caching=True``; otherwise both calls raise ``ValueError``):
      ``allocate_cached(seq_id, token_ids) -> (table, num_cached_tokens)`` reuses the longest chain of
      cached full blocks of ``token_ids`` (never the block of the last token) and allocates the rest;
      ``cache_full_blocks(seq_id, token_ids) -> int`` registers the sequence's full blocks of its computed
      ``token_ids`` (chained content hash). A cached block nobody references stays allocated but
      *evictable* (counted in ``num_free_gpu_blocks``), evicted least recently released first; ``stats()``
      adds ``prefix_queries``/``prefix_hits`` (tokens), ``prefix_hit_rate``, ``cached_blocks``,
      ``evictable_blocks``, ``evictions``.

    Exhaustion policy: ``"refuse"`` raises ``OutOfBlocks`` (attributes ``needed``, ``free``,
    ``device``) and changes nothing; ``"preempt"`` frees the most recently admitted running
    sequences until the step fits and reports them in ``StepResult.preempted`` (the caller
    re-queues them for recompute, or swaps instead by calling ``swap_out`` itself).
    Errors: unknown sequence id -> ``KeyError`` naming it; a bad argument or a call in the wrong state
    -> ``ValueError``; every failed call leaves the manager unchanged. Sizes are bounded before anything
    is allocated (``limits``: 1 <= num_gpu_blocks <= 2**31 - 1, 1 <= block_size <= 2**16,
    0 <= num_cpu_blocks <= 2**31 - 1), and any integer argument outside its range (ids, token counts
    and run lengths: u64; block ids: u32) is a ``ValueError`` naming it; a pool whose bookkeeping the
    host cannot hold is a ``MemoryError``. A Rust panic arrives as
    ``RuntimeError`` (never a crash) and the object refuses further calls.

``BuddyAllocator(num_blocks)`` / ``LifoBlockAllocator(num_blocks)`` (0 <= num_blocks <= 2**31 - 1)
    ``allocate(n=1) -> int | None`` (first block of a contiguous run of ``n``; LIFO supports only
    ``n == 1``), ``free(start, n=1)``, ``num_blocks``, ``num_free_blocks``, ``is_allocated(block)``,
    ``free_blocks_per_order()``, ``largest_free_run()``, ``external_fragmentation()``
    (1 − largest free run / total free), ``check_invariants()``.

Implementations: ``solution`` = the Rust extension ``titaninfer_kvcache`` (``make setup`` builds and
installs it); ``framework`` = the Python manager over the Rust LIFO free list (no buddy, no fork);
``reference`` = pure Python, same answers as the Rust types (the tests' oracle, P1.1's baseline).
Importing this package never needs the extension; asking for a Rust type without it raises
``NativeExtensionMissing`` saying to run ``make setup``.
"""

from __future__ import annotations

from types import ModuleType

from .errors import BUILD_HINT, NativeExtensionMissing, OutOfBlocks, native

__all__ = [
    "BUILD_HINT",
    "BlockManager",
    "BuddyAllocator",
    "LifoBlockAllocator",
    "NativeExtensionMissing",
    "OutOfBlocks",
    "StepResult",
    "load_impl",
    "native",
    "native_available",
]

_NATIVE_TYPES = ("BlockManager", "BuddyAllocator", "LifoBlockAllocator", "StepResult")


def __getattr__(name: str):
    """``phase1_rust_memory.BlockManager`` etc. are the Rust types, imported on first use."""
    if name in _NATIVE_TYPES:
        return getattr(native(), name)
    raise AttributeError(f"module 'phase1_rust_memory' has no attribute '{name}'")


def native_available() -> bool:
    try:
        native()
    except NativeExtensionMissing:
        return False
    return True


def load_impl(name: str) -> ModuleType:
    """``framework``, ``solution``, ``reference`` or a module path such as ``phase1_rust_memory.mine``."""
    from module0_profiling.impl import load_impl as _load

    return _load(__name__, "phase1_rust_memory.reference" if name == "reference" else name)
