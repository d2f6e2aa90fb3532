"""P1.3 in the test suite: 10^5 random operations on the Rust block manager with outside checks,
plus shorter runs on the reference and the allocators (the bench runs the same at full length)."""

import pytest
from p1_helpers import needs_native

from phase1_rust_memory import reference
from phase1_rust_memory.stress import stress_allocator, stress_block_manager


@needs_native
def test_rust_block_manager_100k_ops():
    from phase1_rust_memory import solution

    rep = stress_block_manager(solution.BlockManager, 100_000, seed=11, fork=True, swap=True)
    assert rep.violations == []
    assert rep.refused and rep.preempted and rep.forks and rep.copies  # the run did reach every path


@needs_native
@pytest.mark.parametrize("kind,max_run", [("BuddyAllocator", 64), ("LifoBlockAllocator", 1)])
def test_rust_allocators(kind, max_run):
    from phase1_rust_memory import solution

    rep = stress_allocator(getattr(solution, kind), 30_000, seed=12, max_run=max_run)
    assert rep.violations == [] and rep.refused


@pytest.mark.parametrize("allocator", ["buddy", "lifo"])
def test_reference_block_manager(allocator):
    rep = stress_block_manager(reference.BlockManager, 10_000, seed=13, allocator=allocator)
    assert rep.violations == [] and rep.copies


def test_stress_checker_catches_a_double_allocation():
    """The checker itself can fail: a manager that hands out a block someone holds is flagged."""

    class Leaky(reference.BlockManager):
        def allocate(self, seq_id, num_tokens):
            super().allocate(seq_id, num_tokens)
            mine = self._seqs[seq_id].table
            other = next((s for s in self._seqs.values() if s.table and s.table is not mine), None)
            if mine and other is not None:
                mine[0] = other.table[0]  # now two sequences own one block
            return list(mine)

    rep = stress_block_manager(Leaky, 300, seed=14, fork=False, swap=False)
    assert any("while" in v or "!=" in v for v in rep.violations)
