"""Framework: the lesson's starting point — a LIFO free list (in Rust) under a block manager in Python.

- ``LifoBlockAllocator`` is the Rust free list of the lesson's starting skeleton (``rust/src/lifo.rs``): a
  stack of block ids, O(1) pop and push.
- ``BlockManager`` is the Python reference manager (``reference_block_manager.py``) running over that
  Rust free list. It is correct; it is slow because every generated token of every sequence runs a
  few dozen Python bytecodes (dict lookup, attribute reads, list append, a call across into Rust for
  the block) for every token, so a decode step of hundreds of sequences costs scheduler time
  before the GPU sees any work (``NOTES.md``).
- What it cannot do: the free list keeps no adjacency, so ``allocate(n > 1)`` has no contiguous run
  to give (prompts get scattered blocks); and with no reference counts, ``fork`` (parallel sampling,
  shared prefixes, copy-on-write) is missing. ``BuddyAllocator`` is this phase's task.

The solution (``solution.py``) moves the whole manager into Rust and adds the buddy allocator, fork
with copy-on-write and the exhaustion policies.
"""

from __future__ import annotations

from .errors import OutOfBlocks, native
from .reference_block_manager import BlockManager as _ReferenceBlockManager
from .reference_block_manager import StepResult

__all__ = ["BlockManager", "BuddyAllocator", "LifoBlockAllocator", "OutOfBlocks", "StepResult"]

NO_FORK = (
    "the framework block manager keeps no reference counts, so sequences cannot share blocks: "
    "fork and copy-on-write are in the solution (IMPL=solution)"
)
NO_BUDDY = (
    "the framework has only the LIFO free list: BuddyAllocator (contiguous runs, split/merge) is this "
    "phase's task — see rust/src/buddy.rs (IMPL=solution)"
)


def LifoBlockAllocator(num_blocks: int):  # noqa: N802 — a constructor, named as the Rust type it returns
    """The Rust free-list allocator (raises NativeExtensionMissing if the extension is not built)."""
    return native().LifoBlockAllocator(num_blocks)


class BuddyAllocator:
    def __init__(self, num_blocks: int):
        raise NotImplementedError(NO_BUDDY)


class BlockManager(_ReferenceBlockManager):
    """The Python reference manager over the Rust LIFO free list, without fork."""

    def __init__(self, num_gpu_blocks: int, block_size: int = 16, *, allocator: str = "lifo", **kwargs):
        if allocator != "lifo":
            raise NotImplementedError(NO_BUDDY)
        super().__init__(num_gpu_blocks, block_size, allocator="lifo", **kwargs)

    def _make_allocator(self, name: str, num_blocks: int):
        return native().LifoBlockAllocator(num_blocks)

    def fork(self, parent_id: int, child_id: int) -> None:
        raise NotImplementedError(NO_FORK)
