//! The block manager: sequence -> block table over a pool of fixed-size KV blocks (vLLM §4.2-4.5).
//!
//! A sequence's tokens live in `block_size`-token blocks anywhere in the pool; its block table maps
//! logical block i to a physical block id, so the only waste is the unfilled tail of each sequence's
//! last block. Forked sequences (parallel sampling, shared prefixes) share blocks through reference
//! counts; the first write into a shared, partly filled last block copies it (copy-on-write). When
//! blocks run out, the policy either refuses (nothing changes) or preempts the most recently admitted
//! sequences (their blocks are freed; the caller recomputes them later). Swap-out/in moves a group of
//! sequences between the GPU pool and a CPU pool and returns the block copies to perform. Prefix
//! caching (`prefix.rs`, off unless `with_prefix_caching`) reuses full blocks across sequences by content.
//!
//! Every public method validates its arguments before it changes anything, so an error leaves the
//! manager as it was. The Python reference (`phase1_rust_memory/reference_block_manager.py`) is this
//! file line for line in Python; the differential test holds them to the same answers.

use std::collections::BTreeMap;

use crate::errors::{invalid, Device, KvError, KvResult};
use crate::fxhash::FxHashMap;
use crate::limits::{filled, BLOCK_SIZE, NUM_CPU_BLOCKS, NUM_GPU_BLOCKS};
use crate::pool::{AllocatorKind, Pool};

mod inspect;
mod prefix;
mod swap;

pub use prefix::{block_hash, PrefixStats, ROOT_HASH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Refuse,
    Preempt,
}

impl Policy {
    pub fn parse(name: &str) -> KvResult<Self> {
        match name {
            "refuse" => Ok(Self::Refuse),
            "preempt" => Ok(Self::Preempt),
            _ => invalid(format!(
                "policy must be 'refuse' or 'preempt', got '{name}'"
            )),
        }
    }
}

struct Sequence {
    table: Vec<u32>,
    num_tokens: usize,
    on_gpu: bool,
    admitted: u64,
    /// The number of the last call that named this sequence: finds duplicates in a batch without
    /// building a hash set per step.
    mark: u64,
    /// Prefix caching: the chained hashes of its leading full blocks hashed so far.
    hashes: Vec<u64>,
}

impl Sequence {
    fn new(table: Vec<u32>, num_tokens: usize, admitted: u64) -> Self {
        Self {
            table,
            num_tokens,
            on_gpu: true,
            admitted,
            mark: 0,
            hashes: Vec::new(),
        }
    }
}

/// What one batched step did: a slot per appended sequence (in the order asked, victims left out),
/// the blocks newly given to sequences (fresh or copy-on-write destinations), the (src, dst) block
/// copies the model runner must perform before writing, and the sequences preempted to make room.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    pub slots: Vec<u64>,
    pub new_blocks: Vec<(u64, u32)>,
    pub copies: Vec<(u32, u32)>,
    pub preempted: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub num_gpu_blocks: usize,
    pub free_gpu_blocks: usize,
    pub used_gpu_blocks: usize,
    pub num_cpu_blocks: usize,
    pub free_cpu_blocks: usize,
    pub num_running: usize,
    pub num_swapped: usize,
    pub shared_blocks: usize,
    pub stored_tokens: usize,
    pub allocated_slots: usize,
    pub unused_slots: usize,
    pub largest_free_run: usize,
    pub external_fragmentation: f64,
    pub table_contiguity: f64,
    pub cow_copies: u64,
    pub preemptions: u64,
    pub swapped_out_blocks: u64,
    pub swapped_in_blocks: u64,
    pub prefix: Option<PrefixStats>,
}

pub struct BlockManager {
    block_size: usize,
    watermark_blocks: usize,
    policy: Policy,
    gpu: Pool,
    cpu: Pool,
    gpu_refs: Vec<u32>,
    cpu_refs: Vec<u32>,
    seqs: FxHashMap<u64, Sequence>,
    /// GPU-resident sequences by admission number: the last one is the preemption victim (LIFO, as vLLM).
    running: BTreeMap<u64, u64>,
    next_admission: u64,
    call_mark: u64,
    cow_copies: u64,
    preemptions: u64,
    swapped_out_blocks: u64,
    swapped_in_blocks: u64,
    prefix: Option<prefix::PrefixCache>,
}

impl BlockManager {
    pub fn new(
        num_gpu_blocks: usize,
        block_size: usize,
        num_cpu_blocks: usize,
        watermark: f64,
        policy: Policy,
        allocator: AllocatorKind,
    ) -> KvResult<Self> {
        // Sizes first, before anything is allocated (the order Python passes the arguments in).
        NUM_GPU_BLOCKS.check(num_gpu_blocks as u64)?;
        BLOCK_SIZE.check(block_size as u64)?;
        NUM_CPU_BLOCKS.check(num_cpu_blocks as u64)?;
        if !(0.0..1.0).contains(&watermark) {
            return invalid(format!(
                "watermark must be a fraction in [0, 1), got {watermark}"
            ));
        }
        Ok(Self {
            block_size,
            watermark_blocks: (watermark * num_gpu_blocks as f64).floor() as usize,
            policy,
            gpu: Pool::new(allocator, num_gpu_blocks)?,
            cpu: Pool::new(allocator, num_cpu_blocks)?,
            gpu_refs: filled(num_gpu_blocks, 0)?,
            cpu_refs: filled(num_cpu_blocks, 0)?,
            seqs: FxHashMap::default(),
            running: BTreeMap::new(),
            next_admission: 0,
            call_mark: 0,
            cow_copies: 0,
            preemptions: 0,
            swapped_out_blocks: 0,
            swapped_in_blocks: 0,
            prefix: None,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn watermark_blocks(&self) -> usize {
        self.watermark_blocks
    }
    pub fn num_gpu_blocks(&self) -> usize {
        self.gpu.num_blocks()
    }
    pub fn num_cpu_blocks(&self) -> usize {
        self.cpu.num_blocks()
    }
    /// Free for a new block: the allocator's free blocks and the evictable cached ones.
    pub fn num_free_gpu_blocks(&self) -> usize {
        self.gpu.num_free_blocks() + self.num_evictable()
    }
    pub fn num_free_cpu_blocks(&self) -> usize {
        self.cpu.num_free_blocks()
    }

    #[inline]
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    fn seq(&self, seq_id: u64) -> KvResult<&Sequence> {
        self.seqs
            .get(&seq_id)
            .ok_or(KvError::UnknownSequence(seq_id))
    }

    fn gpu_seq(&self, seq_id: u64) -> KvResult<&Sequence> {
        let seq = self.seq(seq_id)?;
        if !seq.on_gpu {
            return invalid(format!(
                "sequence {seq_id} is swapped out to cpu: swap_in it first"
            ));
        }
        Ok(seq)
    }

    fn check_new_id(&self, seq_id: u64) -> KvResult<()> {
        if self.seqs.contains_key(&seq_id) {
            return invalid(format!(
                "sequence {seq_id} already exists: free it before reusing its id"
            ));
        }
        Ok(())
    }

    /// Known, on the GPU (or on the CPU when `swapped`), and each id once.
    fn check_group(&mut self, seq_ids: &[u64], swapped: bool) -> KvResult<()> {
        self.call_mark += 1;
        let mark = self.call_mark;
        for &id in seq_ids {
            let seq = self.seqs.get_mut(&id).ok_or(KvError::UnknownSequence(id))?;
            if swapped && seq.on_gpu {
                return invalid(format!("sequence {id} is not swapped out"));
            }
            if !swapped && !seq.on_gpu {
                return invalid(format!(
                    "sequence {id} is swapped out to cpu: swap_in it first"
                ));
            }
            if std::mem::replace(&mut seq.mark, mark) == mark {
                return invalid(format!("sequence {id} appears twice in one call"));
            }
        }
        Ok(())
    }

    fn admit(&mut self, seq_id: u64) -> u64 {
        let n = self.next_admission;
        self.next_admission += 1;
        self.running.insert(n, seq_id);
        n
    }

    /// Whether a prompt of `num_tokens` fits while keeping `watermark` of the pool free for growth.
    pub fn can_allocate(&self, num_tokens: usize) -> bool {
        let (free, needed) = (self.num_free_gpu_blocks(), self.blocks_for(num_tokens));
        free >= needed && free - needed >= self.watermark_blocks
    }

    /// Blocks for a new sequence's prompt, taken as the longest contiguous runs the pool has.
    /// Admitting a prompt never preempts: a scheduler asks `can_allocate` first.
    pub fn allocate(&mut self, seq_id: u64, num_tokens: usize) -> KvResult<Vec<u32>> {
        self.check_new_id(seq_id)?;
        let needed = self.blocks_for(num_tokens);
        let free = self.num_free_gpu_blocks();
        if needed > free {
            return Err(KvError::OutOfBlocks {
                needed,
                free,
                device: Device::Gpu,
            });
        }
        let table = self.take_runs(needed)?;
        let admitted = self.admit(seq_id);
        let result = table.clone();
        self.seqs
            .insert(seq_id, Sequence::new(table, num_tokens, admitted));
        Ok(result)
    }

    /// `needed` blocks as the longest contiguous runs the pool has (evicting cached blocks first
    /// when the allocator alone is short); the caller has checked they are free.
    fn take_runs(&mut self, needed: usize) -> KvResult<Vec<u32>> {
        self.evict_for(needed)?;
        let mut table = Vec::with_capacity(needed);
        let mut remaining = needed;
        while remaining > 0 {
            let run = remaining.min(self.gpu.largest_free_run());
            let start = self
                .gpu
                .allocate(run)?
                .expect("a run no longer than the largest free run exists");
            for b in start..start + run as u32 {
                self.gpu_refs[b as usize] = 1;
                table.push(b);
            }
            remaining -= run;
        }
        Ok(table)
    }

    /// New blocks the next token of each sequence needs, counting each copy-on-write once per sharer
    /// that must copy (the last sharer to write owns the original block).
    fn blocks_needed(&self, seq_ids: &[u64]) -> usize {
        let mut copying: FxHashMap<u32, u32> = FxHashMap::default();
        let mut needed = 0;
        for id in seq_ids {
            let seq = &self.seqs[id];
            if seq.num_tokens == seq.table.len() * self.block_size {
                needed += 1;
            } else {
                let last = *seq.table.last().expect("a partly filled block exists");
                if self.gpu_refs[last as usize] > 1 {
                    // Shared: only the map of earlier copiers in this batch says whether we copy.
                    let pending = copying.entry(last).or_insert(0);
                    if self.gpu_refs[last as usize] - *pending > 1 {
                        *pending += 1;
                        needed += 1;
                    }
                }
            }
        }
        needed
    }

    /// Append one token's slot; the caller has checked a block is free if one is needed.
    #[inline]
    fn append_one(&mut self, seq_id: u64) -> KvResult<(u64, Option<u32>, Option<(u32, u32)>)> {
        let bs = self.block_size;
        let seq = self.seqs.get_mut(&seq_id).expect("validated sequence");
        let t = seq.num_tokens;
        let (mut new_block, mut copy) = (None, None);
        if t == seq.table.len() * bs {
            let b = prefix::take(&mut self.gpu, &mut self.prefix)?;
            self.gpu_refs[b as usize] = 1;
            seq.table.push(b);
            new_block = Some(b);
        } else {
            let last = *seq.table.last().expect("a partly filled block exists");
            if self.gpu_refs[last as usize] > 1 {
                // Copy-on-write: others still read this block's first slots; we get a private copy.
                let dst = prefix::take(&mut self.gpu, &mut self.prefix)?;
                self.gpu_refs[last as usize] -= 1;
                self.gpu_refs[dst as usize] = 1;
                *seq.table.last_mut().expect("non-empty") = dst;
                new_block = Some(dst);
                copy = Some((last, dst));
                self.cow_copies += 1;
            }
        }
        seq.num_tokens = t + 1;
        let block = *seq.table.last().expect("non-empty") as u64;
        Ok((block * bs as u64 + (t % bs) as u64, new_block, copy))
    }

    /// The per-call API: one slot for one sequence, `(slot, (src, dst) copy or None)`. Always refuses
    /// when no block is free (a single call has no batch to pick victims from; `step` applies the policy).
    pub fn append_slot(&mut self, seq_id: u64) -> KvResult<(u64, Option<(u32, u32)>)> {
        self.gpu_seq(seq_id)?;
        let needed = self.blocks_needed(&[seq_id]);
        let free = self.num_free_gpu_blocks();
        if needed > free {
            return Err(KvError::OutOfBlocks {
                needed,
                free,
                device: Device::Gpu,
            });
        }
        let (slot, _, copy) = self.append_one(seq_id)?;
        Ok((slot, copy))
    }

    pub fn can_append(&mut self, seq_ids: &[u64]) -> KvResult<bool> {
        self.check_group(seq_ids, false)?;
        Ok(self.blocks_needed(seq_ids) <= self.num_free_gpu_blocks())
    }

    /// The batched per-step API: one slot for every sequence in `seq_ids`, applying the policy.
    pub fn step(&mut self, seq_ids: &[u64]) -> KvResult<StepOutcome> {
        self.check_group(seq_ids, false)?;
        let mut out = StepOutcome::default();
        let mut live = seq_ids.to_vec();
        loop {
            let needed = self.blocks_needed(&live);
            let free = self.num_free_gpu_blocks();
            if needed <= free {
                break;
            }
            let victim = match (self.policy, self.running.last_key_value()) {
                (Policy::Preempt, Some((_, &victim))) => victim,
                _ => {
                    return Err(KvError::OutOfBlocks {
                        needed,
                        free,
                        device: Device::Gpu,
                    })
                }
            };
            self.free_seq(victim)?;
            self.preemptions += 1;
            out.preempted.push(victim);
            live.retain(|&s| s != victim);
        }
        out.slots.reserve(live.len());
        for id in live {
            let (slot, new_block, copy) = self.append_one(id)?;
            out.slots.push(slot);
            if let Some(b) = new_block {
                out.new_blocks.push((id, b));
            }
            if let Some(c) = copy {
                out.copies.push(c);
            }
        }
        Ok(out)
    }

    /// `child` shares all of `parent`'s blocks (reference counts + 1); writes copy on demand.
    pub fn fork(&mut self, parent: u64, child: u64) -> KvResult<()> {
        let table = self.gpu_seq(parent)?.table.clone();
        self.check_new_id(child)?;
        for &b in &table {
            self.gpu_refs[b as usize] += 1;
        }
        let (num_tokens, hashes) = {
            let p = &self.seqs[&parent];
            (p.num_tokens, p.hashes.clone())
        };
        let admitted = self.admit(child);
        let mut seq = Sequence::new(table, num_tokens, admitted);
        seq.hashes = hashes;
        self.seqs.insert(child, seq);
        Ok(())
    }

    pub fn free(&mut self, seq_id: u64) -> KvResult<()> {
        self.seq(seq_id)?;
        self.free_seq(seq_id)
    }

    fn free_seq(&mut self, seq_id: u64) -> KvResult<()> {
        let seq = self.seqs.remove(&seq_id).expect("validated sequence");
        // Last block first, so a LIFO pool hands the table back out in its original order (and the
        // prefix cache evicts a sequence's tail before its head, which more sequences share).
        if seq.on_gpu {
            self.running.remove(&seq.admitted);
            for &b in seq.table.iter().rev() {
                self.gpu_refs[b as usize] -= 1;
                if self.gpu_refs[b as usize] == 0 {
                    prefix::release(&mut self.gpu, &mut self.prefix, b)?;
                }
            }
        } else {
            for &b in seq.table.iter().rev() {
                self.cpu_refs[b as usize] -= 1;
                if self.cpu_refs[b as usize] == 0 {
                    self.cpu.free(b, 1)?;
                }
            }
        }
        Ok(())
    }

    pub fn block_table(&self, seq_id: u64) -> KvResult<&[u32]> {
        Ok(&self.seq(seq_id)?.table)
    }
    pub fn num_tokens(&self, seq_id: u64) -> KvResult<usize> {
        Ok(self.seq(seq_id)?.num_tokens)
    }
    pub fn contains(&self, seq_id: u64) -> bool {
        self.seqs.contains_key(&seq_id)
    }
    pub fn is_swapped(&self, seq_id: u64) -> KvResult<bool> {
        Ok(!self.seq(seq_id)?.on_gpu)
    }
    /// All sequences the manager holds (running and swapped), sorted.
    pub fn seq_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.seqs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
    /// GPU-resident sequences, oldest admission first (the preemption order is the reverse).
    pub fn running_seq_ids(&self) -> Vec<u64> {
        self.running.values().copied().collect()
    }
    pub fn ref_count(&self, block: u32) -> KvResult<u32> {
        crate::buddy::check_range(block, 1, self.gpu_refs.len())?;
        Ok(self.gpu_refs[block as usize])
    }
}
