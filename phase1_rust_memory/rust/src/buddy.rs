//! A binary buddy allocator over KV-cache block ids (the Linux page allocator's scheme, Knuth 2.5).
//!
//! Free memory is kept as aligned power-of-two runs, one free list per order. `allocate(n)` takes the
//! smallest run of order >= ceil(log2 n), splitting larger runs in halves on the way down (each split
//! pushes the upper half, the "buddy", onto the next lower list), then returns the unused tail of the
//! run so exactly `n` blocks are taken (like Linux's `alloc_pages_exact`). `free` merges a run with its
//! buddy (`start ^ size`) while the buddy is free and of the same order. Both walk at most
//! `max_order` levels: O(log n).
//!
//! Free lists are intrusive doubly linked lists threaded through per-block arrays, so removing the
//! buddy during a merge is O(1) with no allocation; lists are LIFO (push and pop at the head), which
//! the Python reference mirrors with insertion-ordered dicts so both pick the same blocks.

use crate::errors::{invalid, KvResult};
use crate::limits::{filled, NUM_BLOCKS};

const NIL: u32 = u32::MAX;
const NOT_FREE: i8 = -1;

/// `start .. start + n` lies inside a pool of `total` blocks (no overflow for any `n`).
pub fn check_range(start: u32, n: usize, total: usize) -> KvResult<()> {
    if n == 0 {
        return invalid("a run needs n >= 1 blocks".to_string());
    }
    if n > total || start as usize > total - n {
        return invalid(format!(
            "blocks {start}..{} are out of range: the allocator has {total} blocks",
            start as u128 + n as u128
        ));
    }
    Ok(())
}

#[inline]
fn floor_log2(x: usize) -> u32 {
    usize::BITS - 1 - x.leading_zeros()
}

#[inline]
fn ceil_log2(x: usize) -> u32 {
    if x <= 1 {
        0
    } else {
        floor_log2(x - 1) + 1
    }
}

/// Split `[start, start + n)` into maximal aligned power-of-two runs, lowest address first.
pub fn aligned_pieces(start: u32, n: usize, max_order: u32) -> impl Iterator<Item = (u32, u32)> {
    let end = start as usize + n;
    let mut p = start as usize;
    std::iter::from_fn(move || {
        if p >= end {
            return None;
        }
        let align = if p == 0 {
            max_order
        } else {
            p.trailing_zeros().min(max_order)
        };
        let order = align.min(floor_log2(end - p));
        let piece = (p as u32, order);
        p += 1 << order;
        Some(piece)
    })
}

pub struct BuddyAllocator {
    max_order: u32,
    heads: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Order of the free run that starts at this block, or NOT_FREE.
    free_order: Vec<i8>,
    allocated: Vec<bool>,
    free_runs_per_order: Vec<usize>,
    num_free: usize,
}

impl BuddyAllocator {
    pub fn new(num_blocks: usize) -> KvResult<Self> {
        NUM_BLOCKS.check(num_blocks as u64)?;
        let max_order = if num_blocks == 0 {
            0
        } else {
            floor_log2(num_blocks)
        };
        let levels = max_order as usize + 1;
        let mut a = Self {
            max_order,
            heads: vec![NIL; levels],
            next: filled(num_blocks, NIL)?,
            prev: filled(num_blocks, NIL)?,
            free_order: filled(num_blocks, NOT_FREE)?,
            allocated: filled(num_blocks, false)?,
            free_runs_per_order: vec![0; levels],
            num_free: 0,
        };
        // Pushed highest address first, so the lowest run is on top of its list.
        let pieces: Vec<_> = aligned_pieces(0, num_blocks, max_order).collect();
        for &(start, order) in pieces.iter().rev() {
            a.push(start, order);
        }
        Ok(a)
    }

    pub fn num_blocks(&self) -> usize {
        self.allocated.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    pub fn max_order(&self) -> u32 {
        self.max_order
    }

    #[inline]
    fn push(&mut self, block: u32, order: u32) {
        let head = self.heads[order as usize];
        self.next[block as usize] = head;
        self.prev[block as usize] = NIL;
        if head != NIL {
            self.prev[head as usize] = block;
        }
        self.heads[order as usize] = block;
        self.free_order[block as usize] = order as i8;
        self.free_runs_per_order[order as usize] += 1;
        self.num_free += 1 << order;
    }

    #[inline]
    fn unlink(&mut self, block: u32) {
        let order = self.free_order[block as usize] as usize;
        let (p, n) = (self.prev[block as usize], self.next[block as usize]);
        if p == NIL {
            self.heads[order] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
        self.free_order[block as usize] = NOT_FREE;
        self.free_runs_per_order[order] -= 1;
        self.num_free -= 1 << order;
    }

    /// A contiguous run of exactly `n` blocks: its first block id, or `None` if no run that long is free.
    pub fn allocate(&mut self, n: usize) -> KvResult<Option<u32>> {
        if n == 0 {
            return invalid("allocate(n) needs n >= 1".to_string());
        }
        let order = ceil_log2(n);
        if order > self.max_order {
            return Ok(None);
        }
        let Some(mut level) = (order..=self.max_order).find(|&o| self.heads[o as usize] != NIL)
        else {
            return Ok(None);
        };
        let start = self.heads[level as usize];
        self.unlink(start);
        while level > order {
            level -= 1;
            self.push(start + (1 << level), level); // the upper half becomes a free buddy
        }
        for b in start as usize..start as usize + n {
            self.allocated[b] = true;
        }
        if n < 1 << order {
            // Give back the tail: its pieces' buddies lie in the run we keep, so nothing merges.
            let tail = start + n as u32;
            for (p, o) in aligned_pieces(tail, (1 << order) - n, self.max_order).collect::<Vec<_>>()
            {
                self.release(p, o);
            }
        }
        Ok(Some(start))
    }

    /// Free `start .. start + n`; any allocated blocks may be freed, not only whole runs.
    pub fn free(&mut self, start: u32, n: usize) -> KvResult<()> {
        check_range(start, n, self.num_blocks())?;
        if let Some(b) = (start as usize..start as usize + n).find(|&b| !self.allocated[b]) {
            return invalid(format!("block {b} is not allocated (double free?)"));
        }
        for b in start as usize..start as usize + n {
            self.allocated[b] = false;
        }
        for (p, o) in aligned_pieces(start, n, self.max_order).collect::<Vec<_>>() {
            self.release(p, o);
        }
        Ok(())
    }

    /// Insert a free run, merging it with its buddy as long as the buddy is a free run of the same order.
    #[inline]
    fn release(&mut self, mut block: u32, mut order: u32) {
        while order < self.max_order {
            let buddy = block ^ (1 << order);
            if (buddy as usize) >= self.num_blocks()
                || self.free_order[buddy as usize] != order as i8
            {
                break;
            }
            self.unlink(buddy);
            block = block.min(buddy);
            order += 1;
        }
        self.push(block, order);
    }

    pub fn is_allocated(&self, block: u32) -> KvResult<bool> {
        check_range(block, 1, self.num_blocks())?;
        Ok(self.allocated[block as usize])
    }

    /// Number of free runs on each order's list (index = order, run length = 2^order).
    pub fn free_blocks_per_order(&self) -> Vec<usize> {
        self.free_runs_per_order.clone()
    }

    /// The longest contiguous run `allocate` can return now.
    pub fn largest_free_run(&self) -> usize {
        (0..=self.max_order as usize)
            .rev()
            .find(|&o| self.free_runs_per_order[o] > 0)
            .map_or(0, |o| 1 << o)
    }

    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.next.capacity() + self.prev.capacity() + self.heads.capacity()) * 4
            + self.free_order.capacity()
            + self.allocated.capacity()
            + self.free_runs_per_order.capacity() * std::mem::size_of::<usize>()
    }

    /// Internal consistency, for tests: free runs aligned, disjoint, not allocated, never two free
    /// buddies left unmerged, and counts that add up.
    pub fn check_invariants(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut covered = vec![false; self.num_blocks()];
        let mut total = 0usize;
        for order in 0..=self.max_order {
            let mut runs = 0usize;
            let mut b = self.heads[order as usize];
            while b != NIL {
                runs += 1;
                let size = 1usize << order;
                if b as usize % size != 0 || b as usize + size > self.num_blocks() {
                    problems.push(format!(
                        "free run {b} of order {order} is misaligned or out of range"
                    ));
                    break;
                }
                if self.free_order[b as usize] != order as i8 {
                    problems.push(format!(
                        "free run {b} has order tag {}",
                        self.free_order[b as usize]
                    ));
                }
                for x in b as usize..b as usize + size {
                    if covered[x] || self.allocated[x] {
                        problems.push(format!("block {x} is free twice or free and allocated"));
                    }
                    covered[x] = true;
                }
                let buddy = b ^ (1 << order);
                if order < self.max_order
                    && (buddy as usize) < self.num_blocks()
                    && self.free_order[buddy as usize] == order as i8
                {
                    problems.push(format!(
                        "free buddies {b} and {buddy} of order {order} were not merged"
                    ));
                }
                total += size;
                b = self.next[b as usize];
            }
            if runs != self.free_runs_per_order[order as usize] {
                problems.push(format!(
                    "order {order}: {runs} runs listed, {} counted",
                    self.free_runs_per_order[order as usize]
                ));
            }
        }
        if total != self.num_free {
            problems.push(format!(
                "free lists hold {total} blocks, num_free says {}",
                self.num_free
            ));
        }
        if let Some(x) = (0..self.num_blocks()).find(|&x| !covered[x] && !self.allocated[x]) {
            problems.push(format!("block {x} is neither free nor allocated (leaked)"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_merges_back() {
        let mut a = BuddyAllocator::new(16).unwrap();
        assert_eq!(a.allocate(1).unwrap(), Some(0));
        // Splitting 16 -> 8 + 4 + 2 + 1 + (1 taken): one free run on each lower order.
        assert_eq!(a.free_blocks_per_order(), vec![1, 1, 1, 1, 0]);
        assert_eq!(a.allocate(3).unwrap(), Some(4)); // order-2 run at 4, tail block 7 returned
        assert_eq!(a.free_blocks_per_order(), vec![2, 1, 0, 1, 0]);
        a.free(0, 1).unwrap();
        a.free(4, 3).unwrap();
        assert_eq!(a.free_blocks_per_order(), vec![0, 0, 0, 0, 1]);
        assert!(a.check_invariants().is_empty());
    }

    #[test]
    fn non_power_of_two_total() {
        let mut a = BuddyAllocator::new(100).unwrap(); // 64 + 32 + 4
        assert_eq!(a.largest_free_run(), 64);
        assert_eq!(a.allocate(65).unwrap(), None);
        let runs: Vec<_> = (0..3).map(|_| a.allocate(32).unwrap()).collect();
        assert_eq!(runs, vec![Some(64), Some(0), Some(32)]);
        assert_eq!(a.num_free_blocks(), 4);
        assert!(a.check_invariants().is_empty());
    }

    #[test]
    fn double_free_is_an_error() {
        let mut a = BuddyAllocator::new(8).unwrap();
        let b = a.allocate(2).unwrap().unwrap();
        a.free(b, 2).unwrap();
        assert!(a.free(b, 1).is_err());
        assert!(a.free(7, 2).is_err());
        assert!(a.allocate(0).is_err());
    }

    #[test]
    fn aligned_pieces_cover_the_range() {
        let pieces: Vec<_> = aligned_pieces(5, 11, 4).collect();
        assert_eq!(pieces, vec![(5, 0), (6, 1), (8, 3)]);
    }
}
