//! Errors of the allocator core, with messages that the Python reference reproduces word for word
//! (the differential test compares exception types and messages).

use std::fmt;

/// Which pool ran out: the GPU blocks that hold live KV, or the CPU blocks that hold swapped-out KV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Gpu,
    Cpu,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Gpu => "gpu",
            Device::Cpu => "cpu",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// Not enough free blocks; nothing was changed.
    OutOfBlocks {
        needed: usize,
        free: usize,
        device: Device,
    },
    /// A sequence id the manager does not hold (Python: KeyError).
    UnknownSequence(u64),
    /// A bad argument or a call in the wrong state (Python: ValueError).
    InvalidArgument(String),
    /// An operation this allocator cannot do by design (Python: NotImplementedError).
    Unsupported(String),
    /// The machine refused the memory a pool's bookkeeping needs (Python: MemoryError).
    OutOfMemory(String),
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::OutOfBlocks {
                needed,
                free,
                device,
            } => {
                write!(
                    f,
                    "out of {} KV blocks: need {}, {} free",
                    device.name(),
                    needed,
                    free
                )
            }
            KvError::UnknownSequence(id) => write!(f, "unknown sequence id {id}"),
            KvError::InvalidArgument(msg)
            | KvError::Unsupported(msg)
            | KvError::OutOfMemory(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for KvError {}

pub type KvResult<T> = Result<T, KvError>;

pub fn invalid<T>(msg: String) -> KvResult<T> {
    Err(KvError::InvalidArgument(msg))
}
