//! Swap-out/in bookkeeping for preemption by swapping (vLLM §4.5): a group of sequences moves between
//! the GPU pool and the CPU pool; blocks shared inside the group are copied once and stay shared.

use super::{prefix, BlockManager};
use crate::errors::{Device, KvError, KvResult};
use crate::fxhash::{FxHashMap, FxHashSet};

impl BlockManager {
    /// Move a group of sequences to the CPU pool; returns the (gpu, cpu) block copies to perform
    /// now, before any freed GPU block is reused. Shared blocks are copied once and stay shared.
    pub fn swap_out(&mut self, seq_ids: &[u64]) -> KvResult<Vec<(u32, u32)>> {
        self.check_group(seq_ids, false)?;
        let moved = self.move_group(seq_ids, true)?;
        self.swapped_out_blocks += moved.len() as u64;
        Ok(moved)
    }

    /// Bring swapped-out sequences back (re-admitted in the given order); returns (cpu, gpu) copies.
    pub fn swap_in(&mut self, seq_ids: &[u64]) -> KvResult<Vec<(u32, u32)>> {
        self.check_group(seq_ids, true)?;
        let moved = self.move_group(seq_ids, false)?;
        self.swapped_in_blocks += moved.len() as u64;
        Ok(moved)
    }

    pub fn can_swap_in(&mut self, seq_ids: &[u64]) -> KvResult<bool> {
        self.check_group(seq_ids, true)?;
        Ok(self.distinct_blocks(seq_ids) <= self.num_free_gpu_blocks())
    }

    fn distinct_blocks(&self, seq_ids: &[u64]) -> usize {
        let blocks: FxHashSet<u32> = seq_ids
            .iter()
            .flat_map(|id| self.seqs[id].table.iter().copied())
            .collect();
        blocks.len()
    }

    fn move_group(&mut self, seq_ids: &[u64], to_cpu: bool) -> KvResult<Vec<(u32, u32)>> {
        let needed = self.distinct_blocks(seq_ids);
        let (device, free) = if to_cpu {
            (Device::Cpu, self.cpu.num_free_blocks())
        } else {
            (Device::Gpu, self.num_free_gpu_blocks())
        };
        if needed > free {
            return Err(KvError::OutOfBlocks {
                needed,
                free,
                device,
            });
        }
        let mut mapping: FxHashMap<u32, u32> = FxHashMap::default();
        let mut copies = Vec::with_capacity(needed);
        for &id in seq_ids {
            let mut seq = self.seqs.remove(&id).expect("validated sequence");
            if to_cpu {
                self.running.remove(&seq.admitted);
            } else {
                seq.admitted = self.admit(id);
            }
            for entry in seq.table.iter_mut() {
                let src = *entry;
                let dst = match mapping.get(&src) {
                    Some(&d) => d,
                    None => {
                        let d = if to_cpu {
                            self.cpu.allocate(1)?.expect("free blocks were checked")
                        } else {
                            prefix::take(&mut self.gpu, &mut self.prefix)?
                        };
                        mapping.insert(src, d);
                        copies.push((src, d));
                        d
                    }
                };
                if to_cpu {
                    self.cpu_refs[dst as usize] += 1;
                    self.gpu_refs[src as usize] -= 1;
                    if self.gpu_refs[src as usize] == 0 {
                        // A cached block stays evictable: the GPU copy is still a valid prefix.
                        prefix::release(&mut self.gpu, &mut self.prefix, src)?;
                    }
                } else {
                    self.gpu_refs[dst as usize] += 1;
                    self.cpu_refs[src as usize] -= 1;
                    if self.cpu_refs[src as usize] == 0 {
                        self.cpu.free(src, 1)?;
                    }
                }
                *entry = dst;
            }
            seq.on_gpu = !to_cpu;
            self.seqs.insert(id, seq);
        }
        Ok(copies)
    }
}
