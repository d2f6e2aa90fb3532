//! The block manager's choice of allocator: one enum, so the hot path is a match, not a vtable.

use crate::buddy::BuddyAllocator;
use crate::errors::{invalid, KvResult};
use crate::lifo::LifoBlockAllocator;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorKind {
    Lifo,
    Buddy,
}

impl AllocatorKind {
    pub fn parse(name: &str) -> KvResult<Self> {
        match name {
            "lifo" => Ok(Self::Lifo),
            "buddy" => Ok(Self::Buddy),
            _ => invalid(format!("allocator must be 'buddy' or 'lifo', got '{name}'")),
        }
    }
}

pub enum Pool {
    Lifo(LifoBlockAllocator),
    Buddy(BuddyAllocator),
}

macro_rules! both {
    ($self:ident, $a:ident => $e:expr) => {
        match $self {
            Pool::Lifo($a) => $e,
            Pool::Buddy($a) => $e,
        }
    };
}

impl Pool {
    pub fn new(kind: AllocatorKind, num_blocks: usize) -> KvResult<Self> {
        Ok(match kind {
            AllocatorKind::Lifo => Pool::Lifo(LifoBlockAllocator::new(num_blocks)?),
            AllocatorKind::Buddy => Pool::Buddy(BuddyAllocator::new(num_blocks)?),
        })
    }
    #[inline]
    pub fn allocate(&mut self, n: usize) -> KvResult<Option<u32>> {
        both!(self, a => a.allocate(n))
    }
    #[inline]
    pub fn free(&mut self, start: u32, n: usize) -> KvResult<()> {
        both!(self, a => a.free(start, n))
    }
    #[inline]
    pub fn num_free_blocks(&self) -> usize {
        both!(self, a => a.num_free_blocks())
    }
    pub fn num_blocks(&self) -> usize {
        both!(self, a => a.num_blocks())
    }
    #[inline]
    pub fn largest_free_run(&self) -> usize {
        both!(self, a => a.largest_free_run())
    }
    pub fn is_allocated(&self, block: u32) -> KvResult<bool> {
        both!(self, a => a.is_allocated(block))
    }
    pub fn memory_bytes(&self) -> usize {
        both!(self, a => a.memory_bytes())
    }
    pub fn check_invariants(&self) -> Vec<String> {
        both!(self, a => a.check_invariants())
    }
}
