"""Pure-Python reference of the two block allocators, the same algorithms as ``rust/src/lifo.rs`` and
``rust/src/buddy.rs`` down to which block each call returns and every error message.

It is the oracle the Rust crate is tested against (``tests/test_p1_differential.py``) and the
baseline the benchmark compares with: readable, correct, and slow because each call runs a few
dozen bytecodes with dict and list operations on boxed integers. Integer arguments are checked
against ``limits`` as the Rust binding checks them, so both reject the same values the same way.
"""

from __future__ import annotations

from typing import Iterator

from .limits import BLOCK, NUM_BLOCKS, RUN_LENGTH, START


def check_range(start: int, n: int, total: int) -> None:
    if n < 1:
        raise ValueError("a run needs n >= 1 blocks")
    if start + n > total:
        raise ValueError(f"blocks {start}..{start + n} are out of range: the allocator has {total} blocks")


def aligned_pieces(start: int, n: int, max_order: int) -> Iterator[tuple[int, int]]:
    """Split ``[start, start + n)`` into maximal aligned power-of-two runs, lowest address first."""
    p, end = start, start + n
    while p < end:
        align = max_order if p == 0 else min((p & -p).bit_length() - 1, max_order)
        order = min(align, (end - p).bit_length() - 1)
        yield p, order
        p += 1 << order


class LifoBlockAllocator:
    """The starting free list: a stack of block ids. O(1); no contiguous runs (``allocate(n > 1)``
    raises NotImplementedError)."""

    def __init__(self, num_blocks: int):
        num_blocks = NUM_BLOCKS.check(num_blocks)
        self._free_blocks = list(range(num_blocks - 1, -1, -1))  # block 0 on top
        self._is_free = bytearray(b"\x01") * num_blocks

    @property
    def num_blocks(self) -> int:
        return len(self._is_free)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_blocks)

    def allocate(self, n: int = 1) -> int | None:
        n = RUN_LENGTH.check(n)
        if n != 1:
            if n < 1:
                raise ValueError("allocate(n) needs n >= 1")
            raise NotImplementedError(
                "LifoBlockAllocator hands out one block at a time: a free list keeps no adjacency, so it "
                "has no contiguous runs (BuddyAllocator.allocate(n) does)"
            )
        if not self._free_blocks:
            return None
        block = self._free_blocks.pop()
        self._is_free[block] = 0
        return block

    def free(self, start: int, n: int = 1) -> None:
        start, n = START.check(start), RUN_LENGTH.check(n)
        check_range(start, n, self.num_blocks)
        for b in range(start, start + n):
            if self._is_free[b]:
                raise ValueError(f"block {b} is not allocated (double free?)")
        for b in range(start, start + n):
            self._is_free[b] = 1
            self._free_blocks.append(b)

    def is_allocated(self, block: int) -> bool:
        block = BLOCK.check(block)
        check_range(block, 1, self.num_blocks)
        return not self._is_free[block]

    def free_blocks_per_order(self) -> list[int]:
        return [self.num_free_blocks]

    def largest_free_run(self) -> int:
        return min(self.num_free_blocks, 1)

    def external_fragmentation(self) -> float:
        free = self.num_free_blocks
        return 0.0 if free == 0 else 1.0 - self.largest_free_run() / free

    def check_invariants(self) -> list[str]:
        problems = []
        if len(set(self._free_blocks)) != len(self._free_blocks):
            problems.append("a block is on the free list twice")
        if sorted(self._free_blocks) != [b for b in range(self.num_blocks) if self._is_free[b]]:
            problems.append("free list and is_free flags disagree")
        return problems


class BuddyAllocator:
    """Binary buddy allocator: one free list per order (an insertion-ordered dict used as a LIFO
    stack that also deletes in O(1), mirroring the Rust intrusive lists); split on allocate, merge
    with the buddy ``start ^ 2**order`` on free."""

    def __init__(self, num_blocks: int):
        num_blocks = NUM_BLOCKS.check(num_blocks)
        self._max_order = num_blocks.bit_length() - 1 if num_blocks else 0
        self._free: list[dict[int, None]] = [{} for _ in range(self._max_order + 1)]
        self._order_of: dict[int, int] = {}  # start of each free run -> its order
        self._allocated = bytearray(num_blocks)
        self._num_free = 0
        for start, order in reversed(list(aligned_pieces(0, num_blocks, self._max_order))):
            self._push(start, order)

    @property
    def num_blocks(self) -> int:
        return len(self._allocated)

    @property
    def num_free_blocks(self) -> int:
        return self._num_free

    def _push(self, start: int, order: int) -> None:
        self._free[order][start] = None
        self._order_of[start] = order
        self._num_free += 1 << order

    def _unlink(self, start: int) -> None:
        order = self._order_of.pop(start)
        del self._free[order][start]
        self._num_free -= 1 << order

    def allocate(self, n: int = 1) -> int | None:
        n = RUN_LENGTH.check(n)
        if n < 1:
            raise ValueError("allocate(n) needs n >= 1")
        order = (n - 1).bit_length()
        if order > self._max_order:
            return None
        level = next((o for o in range(order, self._max_order + 1) if self._free[o]), None)
        if level is None:
            return None
        start = next(reversed(self._free[level]))
        self._unlink(start)
        while level > order:
            level -= 1
            self._push(start + (1 << level), level)
        for b in range(start, start + n):
            self._allocated[b] = 1
        if n < 1 << order:
            for p, o in list(aligned_pieces(start + n, (1 << order) - n, self._max_order)):
                self._release(p, o)
        return start

    def free(self, start: int, n: int = 1) -> None:
        start, n = START.check(start), RUN_LENGTH.check(n)
        check_range(start, n, self.num_blocks)
        for b in range(start, start + n):
            if not self._allocated[b]:
                raise ValueError(f"block {b} is not allocated (double free?)")
        for b in range(start, start + n):
            self._allocated[b] = 0
        for p, o in list(aligned_pieces(start, n, self._max_order)):
            self._release(p, o)

    def _release(self, start: int, order: int) -> None:
        while order < self._max_order:
            buddy = start ^ (1 << order)
            if self._order_of.get(buddy) != order:
                break
            self._unlink(buddy)
            start = min(start, buddy)
            order += 1
        self._push(start, order)

    def is_allocated(self, block: int) -> bool:
        block = BLOCK.check(block)
        check_range(block, 1, self.num_blocks)
        return bool(self._allocated[block])

    def free_blocks_per_order(self) -> list[int]:
        return [len(runs) for runs in self._free]

    def largest_free_run(self) -> int:
        return next((1 << o for o in range(self._max_order, -1, -1) if self._free[o]), 0)

    def external_fragmentation(self) -> float:
        free = self._num_free
        return 0.0 if free == 0 else 1.0 - self.largest_free_run() / free

    def check_invariants(self) -> list[str]:
        problems = []
        covered = bytearray(self.num_blocks)
        for order, runs in enumerate(self._free):
            for start in runs:
                if start % (1 << order) or self._order_of.get(start) != order:
                    problems.append(f"free run {start} of order {order} is misaligned or mislabelled")
                for b in range(start, start + (1 << order)):
                    if covered[b] or self._allocated[b]:
                        problems.append(f"block {b} is free twice or free and allocated")
                    covered[b] = 1
                if order < self._max_order and self._order_of.get(start ^ (1 << order)) == order:
                    problems.append(f"free buddies {start} and {start ^ (1 << order)} were not merged")
        if sum(covered) != self._num_free:
            problems.append("free lists and the free count disagree")
        if any(not covered[b] and not self._allocated[b] for b in range(self.num_blocks)):
            problems.append("a block is neither free nor allocated (leaked)")
        return problems
