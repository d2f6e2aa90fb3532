"""The phase's pure-Python reference: every type of the contract, no Rust needed.

``reference.BlockManager``, ``reference.BuddyAllocator``, ``reference.LifoBlockAllocator`` and
``reference.StepResult`` give the same answers as the Rust extension's types; they are the oracle of
the differential tests and the baseline of the benchmark (P1.1).
"""

from .errors import OutOfBlocks
from .reference_allocators import BuddyAllocator, LifoBlockAllocator
from .reference_block_manager import BlockManager, StepResult

__all__ = ["BlockManager", "BuddyAllocator", "LifoBlockAllocator", "OutOfBlocks", "StepResult"]
