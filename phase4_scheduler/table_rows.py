"""The block tables of the running requests as rows of one int32 matrix, kept up to date in place.

Every decode row of a step needs its request's block table. Gathering hundreds of Python lists into an
array every step is per-element work on the host; but a table only changes when a request is
admitted (its prompt's blocks), gets a new block (one entry appended), or leaves (finished or
preempted). So each running request holds a *seat*, a row of ``table``, written on those events
only, and a step's block-table section is one fancy index ``table[seats]`` (the row order of the step).
"""

from __future__ import annotations

import numpy as np


class BlockTableRows:
    """``table[seat, :lens[seat]]`` is the block table of the request in ``seat``; free seats are reused."""

    def __init__(self, capacity: int = 64, width: int = 16):
        self.table = np.zeros((capacity, width), dtype=np.int32)
        self.lens = np.zeros(capacity, dtype=np.int64)
        self._free = list(range(capacity - 1, -1, -1))  # pop() hands out the lowest seat first

    def add(self, blocks: list[int]) -> int:
        """A seat holding ``blocks``."""
        if not self._free:
            self._grow_rows()
        seat = self._free.pop()
        n = len(blocks)
        if n > self.table.shape[1]:
            self._grow_width(n)
        self.table[seat, :n] = blocks
        self.lens[seat] = n
        return seat

    def append_many(self, seats: list[int], blocks: list[int]) -> None:
        """Append ``blocks[i]`` to the table in ``seats[i]`` (each seat at most once: one block per request
        per step)."""
        seats = np.asarray(seats, dtype=np.int64)
        cols = self.lens[seats]
        if cols.max() >= self.table.shape[1]:
            self._grow_width(int(cols.max()) + 1)
        self.table[seats, cols] = blocks
        self.lens[seats] = cols + 1

    def remove(self, seat: int) -> None:
        self.table[seat] = 0
        self.lens[seat] = 0
        self._free.append(seat)

    def row(self, seat: int) -> list[int]:
        return self.table[seat, : self.lens[seat]].tolist()

    def _grow_rows(self) -> None:
        cap, width = self.table.shape
        self.table = np.concatenate([self.table, np.zeros((cap, width), dtype=np.int32)])
        self.lens = np.concatenate([self.lens, np.zeros(cap, dtype=np.int64)])
        self._free = list(range(2 * cap - 1, cap - 1, -1))

    def _grow_width(self, need: int) -> None:
        cap, width = self.table.shape
        grown = np.zeros((cap, max(need, 2 * width)), dtype=np.int32)
        grown[:, :width] = self.table
        self.table = grown
