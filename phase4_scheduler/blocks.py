"""Phase 1's block manager for the scheduler: the Rust one when built, the Python reference otherwise."""

from __future__ import annotations


def make_block_manager(num_blocks: int, block_size: int = 16, *, watermark: float = 0.01,
                       impl: str | None = None, num_cpu_blocks: int = 0):
    """A ``BlockManager`` with ``policy="refuse"``: the scheduler picks its own preemption victims
    (priority-aware), so the manager must only say no. ``impl``: "solution", "reference" or None (best).
    ``num_cpu_blocks``: the CPU pool that preemption by swap moves victims' blocks to."""
    import phase1_rust_memory as p1

    if impl is None:
        impl = "solution" if p1.native_available() else "reference"
    module = p1.load_impl(impl)
    return module.BlockManager(num_blocks, block_size, num_cpu_blocks=num_cpu_blocks, watermark=watermark,
                               policy="refuse")
