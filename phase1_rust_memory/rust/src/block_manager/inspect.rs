//! Read-only views of a block manager: statistics, memory footprint, and an invariant recount.

use super::{BlockManager, Sequence, Stats};
use crate::fxhash::FxHashMap;

impl BlockManager {
    pub fn stats(&self) -> Stats {
        let bs = self.block_size;
        let mut fill: FxHashMap<u32, usize> = FxHashMap::default();
        let (mut pairs, mut contiguous, mut num_swapped) = (0usize, 0usize, 0usize);
        for seq in self.seqs.values() {
            if !seq.on_gpu {
                num_swapped += 1;
                continue;
            }
            for (i, &b) in seq.table.iter().enumerate() {
                let f = fill.entry(b).or_insert(0);
                *f = (*f).max((seq.num_tokens - i * bs).min(bs));
            }
            pairs += seq.table.len().saturating_sub(1);
            contiguous += seq.table.windows(2).filter(|w| w[1] == w[0] + 1).count();
        }
        // Evictable cached blocks count as free; fragmentation is the allocator's own.
        let (free, pool_free) = (self.num_free_gpu_blocks(), self.gpu.num_free_blocks());
        let used = self.gpu.num_blocks() - free;
        let stored: usize = fill.values().sum();
        let largest = self.gpu.largest_free_run();
        Stats {
            num_gpu_blocks: self.gpu.num_blocks(),
            free_gpu_blocks: free,
            used_gpu_blocks: used,
            num_cpu_blocks: self.cpu.num_blocks(),
            free_cpu_blocks: self.cpu.num_free_blocks(),
            num_running: self.running.len(),
            num_swapped,
            shared_blocks: self.gpu_refs.iter().filter(|&&r| r > 1).count(),
            stored_tokens: stored,
            allocated_slots: used * bs,
            unused_slots: used * bs - stored,
            largest_free_run: largest,
            external_fragmentation: if pool_free == 0 {
                0.0
            } else {
                1.0 - largest as f64 / pool_free as f64
            },
            table_contiguity: if pairs == 0 {
                1.0
            } else {
                contiguous as f64 / pairs as f64
            },
            cow_copies: self.cow_copies,
            preemptions: self.preemptions,
            swapped_out_blocks: self.swapped_out_blocks,
            swapped_in_blocks: self.swapped_in_blocks,
            prefix: self.prefix_stats(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<u64>() + std::mem::size_of::<Sequence>() + 1;
        let tables: usize = self.seqs.values().map(|s| s.table.capacity() * 4).sum();
        std::mem::size_of::<Self>()
            + self.seqs.capacity() * per_entry
            + tables
            + self.running.len() * 2 * std::mem::size_of::<u64>() * 2 // B-tree nodes are about half full
            + (self.gpu_refs.capacity() + self.cpu_refs.capacity()) * 4
            + self.gpu.memory_bytes()
            + self.cpu.memory_bytes()
            + self.prefix.as_ref().map_or(0, |c| c.memory_bytes())
    }

    /// Recount everything from the block tables and compare: for tests and the stress run.
    pub fn check_invariants(&self) -> Vec<String> {
        let mut problems = self.gpu.check_invariants();
        problems.extend(self.cpu.check_invariants());
        let mut gpu = vec![0u32; self.gpu_refs.len()];
        let mut cpu = vec![0u32; self.cpu_refs.len()];
        for (&id, seq) in &self.seqs {
            if seq.table.len() != self.blocks_for(seq.num_tokens) {
                problems.push(format!(
                    "sequence {id}: {} blocks for {} tokens",
                    seq.table.len(),
                    seq.num_tokens
                ));
            }
            if seq.on_gpu != (self.running.get(&seq.admitted) == Some(&id)) {
                problems.push(format!(
                    "sequence {id}: running queue disagrees with its location"
                ));
            }
            for &b in &seq.table {
                if seq.on_gpu {
                    gpu[b as usize] += 1
                } else {
                    cpu[b as usize] += 1
                }
            }
        }
        for (name, counted, refs, pool) in [
            ("gpu", &gpu, &self.gpu_refs, &self.gpu),
            ("cpu", &cpu, &self.cpu_refs, &self.cpu),
        ] {
            for (b, (&c, &r)) in counted.iter().zip(refs.iter()).enumerate() {
                if c != r {
                    problems.push(format!(
                        "{name} block {b}: {c} table references, ref count {r}"
                    ));
                }
                // An evictable cached block has no reference but stays allocated (its K/V is kept).
                let held = r > 0 || (name == "gpu" && self.is_evictable(b as u32));
                if pool.is_allocated(b as u32).unwrap_or(false) != held {
                    problems.push(format!(
                        "{name} block {b}: ref count {r} but allocated={}",
                        !held
                    ));
                }
            }
        }
        if self.running.len() != self.seqs.values().filter(|s| s.on_gpu).count() {
            problems.push("running queue length differs from GPU-resident sequences".to_string());
        }
        problems.extend(self.prefix_problems());
        problems
    }
}
