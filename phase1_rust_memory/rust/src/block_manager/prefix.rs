//! Automatic prefix caching (vLLM's): full KV blocks are named by the hash of their content and
//! reused by any later sequence whose tokens start the same way.
//!
//! A full block's hash chains its parent's: `h_i = hash(h_{i-1}, tokens of block i)` (Fx, 64-bit;
//! `ROOT_HASH` before the first block), so one hash names the whole prefix up to that block and a
//! lookup walks the chain until the first miss. `cache_full_blocks` registers a sequence's full
//! blocks once their K/V is computed; `allocate_cached` reuses the longest registered chain (ref
//! counts + 1) and allocates the rest. A registered block whose ref count drops to 0 keeps its K/V
//! and becomes *evictable* (least recently released first); the pool counts evictable blocks as
//! free and evicts them (dropping their hash) only when the allocator itself is empty. The block
//! holding a prompt's last token is never reused: its logits must be computed, and no sequence may
//! write into a block others read. Limit: Fx is not collision resistant: a crafted prompt could
//! alias another's prefix (vLLM offers SHA-256 for untrusted tenants); `reference_prefix_cache.py`
//! is this file in Python.

use super::{BlockManager, Sequence};
use crate::errors::{invalid, Device, KvError, KvResult};
use crate::fxhash::{FxHashMap, FxHasher};
use crate::limits::filled;
use crate::pool::Pool;
use std::hash::Hasher;

/// The parent hash of a sequence's first block.
pub const ROOT_HASH: u64 = 0x243f_6a88_85a3_08d3;
const NIL: u32 = u32::MAX;
const OFF: &str = "prefix caching is off: construct the BlockManager with prefix_caching=True";

/// The chained content hash of one full block.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = FxHasher::default();
    h.write_u64(parent);
    for &t in tokens {
        h.write_u64(t as u64);
    }
    h.finish()
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrefixStats {
    pub queries: u64,
    pub hits: u64,
    pub cached_blocks: usize,
    pub evictable_blocks: usize,
    pub evictions: u64,
}

/// Hash -> block for registered blocks, and the evictable ones as an intrusive doubly linked list
/// (per-block links, O(1) release, revival and eviction; vLLM's free block queue).
pub struct PrefixCache {
    by_hash: FxHashMap<u64, u32>,
    hash_of: Vec<Option<u64>>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
    queries: u64,
    hits: u64,
    evictions: u64,
}

impl PrefixCache {
    pub fn new(num_blocks: usize) -> KvResult<Self> {
        Ok(Self {
            by_hash: FxHashMap::default(),
            hash_of: filled(num_blocks, None)?,
            prev: filled(num_blocks, NIL)?,
            next: filled(num_blocks, NIL)?,
            head: NIL,
            tail: NIL,
            len: 0,
            queries: 0,
            hits: 0,
            evictions: 0,
        })
    }

    pub fn is_cached(&self, block: u32) -> bool {
        self.hash_of[block as usize].is_some()
    }

    /// Append `b` to the least-recently-used list (it was just released).
    fn push_back(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.len += 1;
    }

    /// Take `b` out of the list (a hit revived it).
    fn unlink(&mut self, b: u32) {
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.len -= 1;
    }

    /// Drop the least recently released block's hash; the block, for the allocator.
    fn evict_one(&mut self) -> Option<u32> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        let h = self.hash_of[b as usize]
            .take()
            .expect("an evictable block is cached");
        self.by_hash.remove(&h);
        self.evictions += 1;
        Some(b)
    }

    pub fn memory_bytes(&self) -> usize {
        self.by_hash.capacity() * 13 + self.hash_of.capacity() * 16 + self.prev.capacity() * 8
    }
}

/// A GPU block for a sequence: from the allocator, or the least recently released cached block
/// when the allocator is empty. The caller has checked one is free.
#[inline]
pub(super) fn take(gpu: &mut Pool, prefix: &mut Option<PrefixCache>) -> KvResult<u32> {
    if gpu.num_free_blocks() == 0 {
        if let Some(b) = prefix.as_mut().and_then(PrefixCache::evict_one) {
            gpu.free(b, 1)?;
        }
    }
    Ok(gpu.allocate(1)?.expect("a free block was checked"))
}

/// A GPU block nobody references any more: evictable if cached (its K/V stays), else to the allocator.
#[inline]
pub(super) fn release(gpu: &mut Pool, prefix: &mut Option<PrefixCache>, b: u32) -> KvResult<()> {
    match prefix {
        Some(c) if c.is_cached(b) => {
            c.push_back(b);
            Ok(())
        }
        _ => gpu.free(b, 1),
    }
}

impl BlockManager {
    /// Turn on prefix caching (off by default: the manager then behaves exactly as without it).
    pub fn with_prefix_caching(mut self) -> KvResult<Self> {
        self.prefix = Some(PrefixCache::new(self.gpu.num_blocks())?);
        Ok(self)
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix.is_some()
    }

    pub(super) fn is_evictable(&self, b: u32) -> bool {
        self.prefix.as_ref().is_some_and(|c| c.is_cached(b)) && self.gpu_refs[b as usize] == 0
    }

    pub(super) fn num_evictable(&self) -> usize {
        self.prefix.as_ref().map_or(0, |c| c.len)
    }

    /// Evict until the allocator itself has `n` free blocks (the caller checked the total).
    pub(super) fn evict_for(&mut self, n: usize) -> KvResult<()> {
        while self.gpu.num_free_blocks() < n {
            let b = self.prefix.as_mut().and_then(PrefixCache::evict_one);
            self.gpu
                .free(b.expect("the free count includes evictable blocks"), 1)?;
        }
        Ok(())
    }

    /// A new sequence for `token_ids`, reusing the longest chain of cached full blocks (never the
    /// block of the last token); `(block table, tokens whose K/V is already cached)`.
    pub fn allocate_cached(
        &mut self,
        seq_id: u64,
        token_ids: &[u32],
    ) -> KvResult<(Vec<u32>, usize)> {
        let Some(cache) = self.prefix.as_ref() else {
            return invalid(OFF.to_string());
        };
        self.check_new_id(seq_id)?;
        let bs = self.block_size;
        let (n, mut parent) = (token_ids.len(), ROOT_HASH);
        let (mut hashes, mut table) = (Vec::new(), Vec::new());
        for block in token_ids.chunks_exact(bs).take(n.saturating_sub(1) / bs) {
            let h = block_hash(parent, block);
            match cache.by_hash.get(&h) {
                Some(&b) => {
                    hashes.push(h);
                    table.push(b);
                    parent = h;
                }
                None => break,
            }
        }
        let revived = table
            .iter()
            .filter(|&&b| self.gpu_refs[b as usize] == 0)
            .count();
        let (fresh, free) = (self.blocks_for(n) - table.len(), self.num_free_gpu_blocks());
        if fresh + revived > free {
            return Err(KvError::OutOfBlocks {
                needed: fresh + revived,
                free,
                device: Device::Gpu,
            });
        }
        let cache = self.prefix.as_mut().expect("checked above");
        for &b in &table {
            if self.gpu_refs[b as usize] == 0 {
                cache.unlink(b);
            }
            self.gpu_refs[b as usize] += 1;
        }
        let cached = table.len() * bs;
        cache.queries += n as u64;
        cache.hits += cached as u64;
        table.extend(self.take_runs(fresh)?);
        let admitted = self.admit(seq_id);
        let mut seq = Sequence::new(table.clone(), n, admitted);
        seq.hashes = hashes;
        self.seqs.insert(seq_id, seq);
        Ok((table, cached))
    }

    /// Register the full blocks of `token_ids` (the sequence's leading tokens whose K/V is computed)
    /// not registered yet; a block whose content another block already holds stays private.
    /// Returns how many blocks were registered.
    pub fn cache_full_blocks(&mut self, seq_id: u64, token_ids: &[u32]) -> KvResult<usize> {
        if self.prefix.is_none() {
            return invalid(OFF.to_string());
        }
        let held = self.gpu_seq(seq_id)?.num_tokens;
        if token_ids.len() > held {
            return invalid(format!(
                "{} token ids for sequence {seq_id}, which holds {held}: pass its computed tokens",
                token_ids.len()
            ));
        }
        let bs = self.block_size;
        let cache = self.prefix.as_mut().expect("checked above");
        let seq = self.seqs.get_mut(&seq_id).expect("validated sequence");
        let mut registered = 0;
        for i in seq.hashes.len()..token_ids.len() / bs {
            let parent = seq.hashes.last().copied().unwrap_or(ROOT_HASH);
            let h = block_hash(parent, &token_ids[i * bs..(i + 1) * bs]);
            seq.hashes.push(h);
            let b = seq.table[i];
            if cache.hash_of[b as usize].is_none() && !cache.by_hash.contains_key(&h) {
                cache.hash_of[b as usize] = Some(h);
                cache.by_hash.insert(h, b);
                registered += 1;
            }
        }
        Ok(registered)
    }

    pub fn prefix_stats(&self) -> Option<PrefixStats> {
        self.prefix.as_ref().map(|c| PrefixStats {
            queries: c.queries,
            hits: c.hits,
            cached_blocks: c.by_hash.len(),
            evictable_blocks: c.len,
            evictions: c.evictions,
        })
    }

    /// The cache's own consistency (`check_invariants` adds it): hash map and per-block hashes
    /// agree, and the evictable list holds exactly the cached blocks nobody references.
    pub(super) fn prefix_problems(&self) -> Vec<String> {
        let Some(c) = self.prefix.as_ref() else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        let mut listed = vec![false; c.hash_of.len()];
        let (mut b, mut prev, mut walked) = (c.head, NIL, 0usize);
        while b != NIL && walked <= c.len {
            if c.prev[b as usize] != prev {
                problems.push(format!("evictable block {b}: broken back link"));
            }
            listed[b as usize] = true;
            (prev, b, walked) = (b, c.next[b as usize], walked + 1);
        }
        if walked != c.len || prev != c.tail {
            problems.push(format!(
                "evictable list: {walked} blocks walked, {} counted",
                c.len
            ));
        }
        for (i, h) in c.hash_of.iter().enumerate() {
            let evictable = h.is_some() && self.gpu_refs[i] == 0;
            if listed[i] != evictable {
                problems.push(format!(
                    "gpu block {i}: evictable={evictable} but listed={}",
                    listed[i]
                ));
            }
            if let Some(h) = h {
                if c.by_hash.get(h) != Some(&(i as u32)) {
                    problems.push(format!("gpu block {i}: its hash does not map back to it"));
                }
            }
        }
        if c.by_hash.len() != c.hash_of.iter().filter(|h| h.is_some()).count() {
            problems.push("hash map size differs from the cached blocks".to_string());
        }
        problems
    }
}
