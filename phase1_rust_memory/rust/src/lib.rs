//! TitanInfer phase 1: KV-cache memory management in Rust.
//!
//! The core (`lifo`, `buddy`, `pool`, `block_manager`) is plain Rust with no Python types, so
//! `cargo test` builds and runs it without an interpreter. `python` (behind the `python` feature,
//! which maturin turns on) wraps it as the `titaninfer_kvcache` extension module.

pub mod block_manager;
pub mod buddy;
pub mod errors;
pub mod fxhash;
pub mod lifo;
pub mod limits;
pub mod pool;

#[cfg(feature = "python")]
mod python;

pub use block_manager::{BlockManager, Policy, Stats, StepOutcome};
pub use buddy::BuddyAllocator;
pub use errors::{Device, KvError, KvResult};
pub use lifo::LifoBlockAllocator;
pub use pool::AllocatorKind;
