"""Solution: the whole memory manager in Rust (``rust/``, built into the ``titaninfer_kvcache`` wheel).

- ``BuddyAllocator``: power-of-two free lists threaded through per-block arrays; split on allocate,
  merge with the buddy on free, O(log n) with no heap allocation; contiguous runs of any length.
- ``BlockManager``: block tables, prompt allocation as the longest contiguous runs available, one
  slot per token, fork with reference counts and copy-on-write, refuse/preempt on exhaustion,
  swap-out/in bookkeeping, and ``step`` — one call per decode step for the whole batch.

What limit it approaches: the cost of crossing from Python into native code. A per-token
``append_slot`` is nearly all call overhead (argument parsing, the borrow flag, a tuple back); the
batched ``step`` pays the crossing once per decode step and then mostly converts the id list in and
the slot list out — the work itself (a hash probe and a pop from a free list) is a few instructions.
Further gains would come from not crossing per step at all (the scheduler itself in Rust) or from
passing ids as a buffer. Figures: ``reports/phase1_rust_memory/`` and ``NOTES.md``.
"""

from __future__ import annotations

from .errors import native

_ext = native()  # raises NativeExtensionMissing with "run `make setup`" if the wheel is not installed

BlockManager = _ext.BlockManager
BuddyAllocator = _ext.BuddyAllocator
LifoBlockAllocator = _ext.LifoBlockAllocator
StepResult = _ext.StepResult
OutOfBlocks = _ext.OutOfBlocks

__all__ = ["BlockManager", "BuddyAllocator", "LifoBlockAllocator", "OutOfBlocks", "StepResult"]
