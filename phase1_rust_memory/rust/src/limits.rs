//! The integer ranges the crate accepts, one `IntSpec` per argument, and the one-line error for a
//! value outside (the Python reference, `phase1_rust_memory/limits.py`, holds the same table).
//!
//! Pool sizes are bounded before anything is allocated: block ids are u32 with `u32::MAX` as the
//! free-list terminator, and 31 bits keep every id a valid int32 for the block tables the kernels
//! read; a block size of at most 2**16 keeps every slot (block * block_size + offset) below 2**47.
//! Ids and counts are checked against their Rust type's range, so a Python int that does not fit
//! (negative, >= 2**64) is a ValueError naming the argument, never a wrap. `filled` reserves the
//! per-block vectors fallibly, so a pool the machine cannot hold is an `OutOfMemory` error (Python
//! `MemoryError`) instead of an abort; an OS that overcommits can still kill the process later.

use std::fmt::Display;

use crate::errors::{KvError, KvResult};

/// Blocks in one pool: ids 0 .. 2**31 - 2, all valid int32.
pub const MAX_BLOCKS: u64 = (1 << 31) - 1;
/// Tokens per block.
pub const MAX_BLOCK_SIZE: u64 = 1 << 16;

/// The accepted range of one integer argument and what to say when a value is outside it.
pub struct IntSpec {
    pub name: &'static str,
    pub lo: u64,
    pub hi: u64,
    pub hint: &'static str,
}

impl IntSpec {
    /// `value` is any text Python would print for the int (it may not fit any Rust type).
    pub fn error(&self, value: impl Display) -> KvError {
        KvError::InvalidArgument(format!(
            "{} must be an integer in [{}, {}], got {}: {}",
            self.name, self.lo, self.hi, value, self.hint
        ))
    }

    #[inline]
    pub fn check(&self, value: u64) -> KvResult<u64> {
        if value < self.lo || value > self.hi {
            return Err(self.error(value));
        }
        Ok(value)
    }
}

const fn spec(name: &'static str, lo: u64, hi: u64, hint: &'static str) -> IntSpec {
    IntSpec { name, lo, hi, hint }
}

const SEQ_HINT: &str = "sequence ids are unsigned 64-bit integers";
const BLOCK_HINT: &str = "block ids are unsigned 32-bit integers";
const USIZE_MAX: u64 = usize::MAX as u64;

pub const NUM_GPU_BLOCKS: IntSpec = spec(
    "num_gpu_blocks",
    1,
    MAX_BLOCKS,
    "size the GPU KV pool in blocks (ids are 31-bit: larger blocks hold more tokens)",
);
pub const BLOCK_SIZE: IntSpec = spec(
    "block_size",
    1,
    MAX_BLOCK_SIZE,
    "pass the tokens per KV block, 16 is the usual choice",
);
pub const NUM_CPU_BLOCKS: IntSpec = spec(
    "num_cpu_blocks",
    0,
    MAX_BLOCKS,
    "size the CPU swap pool in blocks (0: no swapping)",
);
pub const NUM_BLOCKS: IntSpec = spec(
    "num_blocks",
    0,
    MAX_BLOCKS,
    "size the pool in blocks (ids are 31-bit)",
);
pub const SEQ_ID: IntSpec = spec("seq_id", 0, u64::MAX, SEQ_HINT);
pub const SEQ_IDS: IntSpec = spec("each of seq_ids", 0, u64::MAX, SEQ_HINT);
pub const PARENT_ID: IntSpec = spec("parent_id", 0, u64::MAX, SEQ_HINT);
pub const CHILD_ID: IntSpec = spec("child_id", 0, u64::MAX, SEQ_HINT);
pub const NUM_TOKENS: IntSpec = spec(
    "num_tokens",
    0,
    USIZE_MAX,
    "a token count is an unsigned 64-bit integer",
);
pub const TOKEN_IDS: IntSpec = spec(
    "each of token_ids",
    0,
    u32::MAX as u64,
    "token ids are unsigned 32-bit integers",
);
pub const BLOCK: IntSpec = spec("block", 0, u32::MAX as u64, BLOCK_HINT);
pub const START: IntSpec = spec("start", 0, u32::MAX as u64, BLOCK_HINT);
pub const RUN_LENGTH: IntSpec = spec(
    "n",
    0,
    USIZE_MAX,
    "a run length is an unsigned 64-bit integer",
);

/// `n` copies of `value`, reserved fallibly: the per-block vectors of a pool too big for this
/// machine give `OutOfMemory`, not an abort.
pub fn filled<T: Clone>(n: usize, value: T) -> KvResult<Vec<T>> {
    let mut v = with_capacity(n)?;
    v.resize(n, value);
    Ok(v)
}

pub fn with_capacity<T>(n: usize) -> KvResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        KvError::OutOfMemory(format!(
            "cannot allocate {} bytes of bookkeeping for {n} KV blocks: use a smaller pool",
            n.saturating_mul(std::mem::size_of::<T>())
        ))
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_argument_value_range_and_fix() {
        let e = NUM_GPU_BLOCKS
            .check(MAX_BLOCKS + 1)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "num_gpu_blocks must be an integer in [1, 2147483647], got 2147483648: size the GPU KV \
             pool in blocks (ids are 31-bit: larger blocks hold more tokens)"
        );
        assert!(BLOCK_SIZE.check(0).is_err());
        assert_eq!(BLOCK_SIZE.check(MAX_BLOCK_SIZE).unwrap(), MAX_BLOCK_SIZE);
        assert_eq!(SEQ_ID.check(u64::MAX).unwrap(), u64::MAX);
    }

    #[test]
    fn refused_reservation_is_an_error_not_an_abort() {
        let err = filled(usize::MAX / 2, 0u32).unwrap_err();
        assert!(matches!(err, KvError::OutOfMemory(_)), "{err:?}");
    }
}
