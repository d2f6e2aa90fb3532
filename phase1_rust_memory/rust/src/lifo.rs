//! The starting skeleton's free-list allocator: a stack of free block ids, `pop` to allocate, `push` to free.
//!
//! O(1) and as simple as it gets, which is why vLLM's v0 block manager used it. What it cannot do:
//! hand out a contiguous run of blocks (the stack remembers no adjacency), so it has no answer to
//! `allocate(n > 1)` and its "largest free run" is one block however much is free.

use crate::errors::{invalid, KvError, KvResult};
use crate::limits::{filled, with_capacity, NUM_BLOCKS};

pub struct LifoBlockAllocator {
    free_blocks: Vec<u32>,
    is_free: Vec<bool>,
}

impl LifoBlockAllocator {
    pub fn new(num_blocks: usize) -> KvResult<Self> {
        NUM_BLOCKS.check(num_blocks as u64)?;
        // Reversed so that block 0 is on top: a fresh allocator hands out 0, 1, 2, ...
        let mut free_blocks = with_capacity(num_blocks)?;
        free_blocks.extend((0..num_blocks as u32).rev());
        Ok(Self {
            free_blocks,
            is_free: filled(num_blocks, true)?,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.is_free.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free_blocks.len()
    }

    /// One block (`n == 1`), or `None` when none is free. `n > 1` is unsupported by design.
    #[inline]
    pub fn allocate(&mut self, n: usize) -> KvResult<Option<u32>> {
        if n != 1 {
            if n == 0 {
                return invalid("allocate(n) needs n >= 1".to_string());
            }
            return Err(KvError::Unsupported(
                "LifoBlockAllocator hands out one block at a time: a free list keeps no adjacency, so it \
                 has no contiguous runs (BuddyAllocator.allocate(n) does)"
                    .to_string(),
            ));
        }
        let block = self.free_blocks.pop();
        if let Some(b) = block {
            self.is_free[b as usize] = false;
        }
        Ok(block)
    }

    /// Return blocks `start .. start + n` (each must be allocated) to the top of the stack.
    pub fn free(&mut self, start: u32, n: usize) -> KvResult<()> {
        crate::buddy::check_range(start, n, self.num_blocks())?;
        for b in start as usize..start as usize + n {
            if self.is_free[b] {
                return invalid(format!("block {b} is not allocated (double free?)"));
            }
        }
        for b in start..start + n as u32 {
            self.is_free[b as usize] = true;
            self.free_blocks.push(b);
        }
        Ok(())
    }

    pub fn is_allocated(&self, block: u32) -> KvResult<bool> {
        crate::buddy::check_range(block, 1, self.num_blocks())?;
        Ok(!self.is_free[block as usize])
    }

    /// A free list only knows single blocks: everything free is "order 0".
    pub fn free_blocks_per_order(&self) -> Vec<usize> {
        vec![self.num_free_blocks()]
    }

    /// The longest run `allocate` can return: one block.
    pub fn largest_free_run(&self) -> usize {
        self.num_free_blocks().min(1)
    }

    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.free_blocks.capacity() * 4 + self.is_free.capacity()
    }

    pub fn check_invariants(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = vec![false; self.num_blocks()];
        for &b in &self.free_blocks {
            if seen[b as usize] {
                problems.push(format!("block {b} is on the free list twice"));
            }
            seen[b as usize] = true;
        }
        if seen != self.is_free {
            problems.push("free list and is_free flags disagree".to_string());
        }
        problems
    }
}
