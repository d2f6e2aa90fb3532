//! pyo3 bindings: thin wrappers that convert arguments, map `KvError` to Python exceptions and turn
//! any Rust panic into a `RuntimeError` (never a crash, never pyo3's BaseException-derived
//! `PanicException`). A panic poisons the object: its state may be half-updated, so later calls refuse.
//! Integer arguments are range-checked as they are extracted (`args`), as in the reference.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyKeyError, PyMemoryError, PyNotImplementedError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::block_manager::{BlockManager as CoreManager, Policy, StepOutcome};
use crate::buddy::BuddyAllocator as CoreBuddy;
use crate::errors::{KvError, KvResult};
use crate::lifo::LifoBlockAllocator as CoreLifo;
use crate::pool::AllocatorKind;

mod args;
mod stats;
use args::{
    extract_ids, extract_tokens, Block, BlockSize, ChildId, Int, NumBlocks, NumCpuBlocks,
    NumGpuBlocks, NumTokens, ParentId, RunLength, SeqId, Start,
};

create_exception!(
    titaninfer_kvcache,
    OutOfBlocks,
    PyException,
    "Not enough free KV blocks; nothing was changed. Attributes: needed, free, device ('gpu' or 'cpu')."
);

fn to_py_err(py: Python<'_>, e: KvError) -> PyErr {
    let msg = e.to_string();
    match e {
        KvError::OutOfBlocks {
            needed,
            free,
            device,
        } => {
            let err = OutOfBlocks::new_err(msg);
            let value = err.value(py);
            let _ = value.setattr("needed", needed);
            let _ = value.setattr("free", free);
            let _ = value.setattr("device", device.name());
            err
        }
        KvError::UnknownSequence(_) => PyKeyError::new_err(msg),
        KvError::InvalidArgument(_) => PyValueError::new_err(msg),
        KvError::Unsupported(_) => PyNotImplementedError::new_err(msg),
        KvError::OutOfMemory(_) => PyMemoryError::new_err(msg),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

const POISONED: &str =
    "this object hit an internal error earlier and its state is unreliable: create a new one";

/// Run `f` on the core object: errors mapped, panics caught and the object poisoned.
fn guarded<C, T>(
    py: Python<'_>,
    poisoned: &mut bool,
    core: &mut C,
    f: impl FnOnce(&mut C) -> KvResult<T>,
) -> PyResult<T> {
    if *poisoned {
        return Err(PyRuntimeError::new_err(POISONED));
    }
    match catch_unwind(AssertUnwindSafe(|| f(core))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py_err(py, e)),
        Err(payload) => {
            *poisoned = true;
            Err(PyRuntimeError::new_err(format!(
                "titaninfer_kvcache internal error (Rust panic: {}); {POISONED}",
                panic_text(&*payload)
            )))
        }
    }
}

macro_rules! allocator_class {
    ($name:ident, $core:ty, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(module = "titaninfer_kvcache")]
        pub struct $name {
            core: $core,
            poisoned: bool,
        }

        #[pymethods]
        impl $name {
            #[new]
            fn new(py: Python<'_>, num_blocks: Int<NumBlocks>) -> PyResult<Self> {
                <$core>::new(num_blocks.usize())
                    .map(|core| Self {
                        core,
                        poisoned: false,
                    })
                    .map_err(|e| to_py_err(py, e))
            }
            /// First block of a contiguous run of `n` free blocks, or None when no such run is free.
            #[pyo3(signature = (n=Int::of(1)))]
            fn allocate(&mut self, py: Python<'_>, n: Int<RunLength>) -> PyResult<Option<u32>> {
                guarded(py, &mut self.poisoned, &mut self.core, |c| {
                    c.allocate(n.usize())
                })
            }
            /// Free blocks `start .. start + n` (each must be allocated).
            #[pyo3(signature = (start, n=Int::of(1)))]
            fn free(
                &mut self,
                py: Python<'_>,
                start: Int<Start>,
                n: Int<RunLength>,
            ) -> PyResult<()> {
                guarded(py, &mut self.poisoned, &mut self.core, |c| {
                    c.free(start.u32(), n.usize())
                })
            }
            #[getter]
            fn num_blocks(&self) -> usize {
                self.core.num_blocks()
            }
            #[getter]
            fn num_free_blocks(&self) -> usize {
                self.core.num_free_blocks()
            }
            fn is_allocated(&mut self, py: Python<'_>, block: Int<Block>) -> PyResult<bool> {
                guarded(py, &mut self.poisoned, &mut self.core, |c| {
                    c.is_allocated(block.u32())
                })
            }
            /// Free runs on each order's list: index k counts runs of 2**k blocks.
            fn free_blocks_per_order(&self) -> Vec<usize> {
                self.core.free_blocks_per_order()
            }
            /// The longest contiguous run `allocate` can return now.
            fn largest_free_run(&self) -> usize {
                self.core.largest_free_run()
            }
            /// 1 - largest free run / total free (0 when nothing is free).
            fn external_fragmentation(&self) -> f64 {
                let free = self.core.num_free_blocks();
                if free == 0 {
                    0.0
                } else {
                    1.0 - self.core.largest_free_run() as f64 / free as f64
                }
            }
            fn memory_bytes(&self) -> usize {
                self.core.memory_bytes()
            }
            /// Internal consistency problems (empty when sound).
            fn check_invariants(&self) -> Vec<String> {
                self.core.check_invariants()
            }
            fn __repr__(&self) -> String {
                format!(
                    "{}(num_blocks={}, free={})",
                    stringify!($name),
                    self.core.num_blocks(),
                    self.core.num_free_blocks()
                )
            }
        }
    };
}

allocator_class!(
    LifoBlockAllocator,
    CoreLifo,
    "The starting skeleton's free-list allocator: O(1) single blocks, no contiguous runs."
);
allocator_class!(
    BuddyAllocator,
    CoreBuddy,
    "Binary buddy allocator: contiguous power-of-two runs, split/merge in O(log n)."
);

/// What one batched step did (see BlockManager.step).
#[pyclass(module = "titaninfer_kvcache", frozen, get_all)]
pub struct StepResult {
    slots: Vec<u64>,
    new_blocks: Vec<(u64, u32)>,
    copies: Vec<(u32, u32)>,
    preempted: Vec<u64>,
}

#[pymethods]
impl StepResult {
    fn __repr__(&self) -> String {
        format!(
            "StepResult(slots={:?}, new_blocks={:?}, copies={:?}, preempted={:?})",
            self.slots, self.new_blocks, self.copies, self.preempted
        )
    }
}

impl From<StepOutcome> for StepResult {
    fn from(o: StepOutcome) -> Self {
        Self {
            slots: o.slots,
            new_blocks: o.new_blocks,
            copies: o.copies,
            preempted: o.preempted,
        }
    }
}

/// Sequence -> block table over a GPU pool (and a CPU pool for swapping). See the phase contract.
#[pyclass(module = "titaninfer_kvcache")]
pub struct BlockManager {
    core: CoreManager,
    poisoned: bool,
}

#[pymethods]
impl BlockManager {
    #[new]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments, one Rust argument each
    #[pyo3(signature = (num_gpu_blocks, block_size=Int::of(16), *, num_cpu_blocks=Int::of(0), watermark=0.01, policy="refuse", allocator="buddy", prefix_caching=false))]
    fn new(
        py: Python<'_>,
        num_gpu_blocks: Int<NumGpuBlocks>,
        block_size: Int<BlockSize>,
        num_cpu_blocks: Int<NumCpuBlocks>,
        watermark: f64,
        policy: &str,
        allocator: &str,
        prefix_caching: bool,
    ) -> PyResult<Self> {
        let build = || -> KvResult<CoreManager> {
            let policy = Policy::parse(policy)?;
            let kind = AllocatorKind::parse(allocator)?;
            let core = CoreManager::new(
                num_gpu_blocks.usize(),
                block_size.usize(),
                num_cpu_blocks.usize(),
                watermark,
                policy,
                kind,
            )?;
            if prefix_caching {
                core.with_prefix_caching()
            } else {
                Ok(core)
            }
        };
        build()
            .map(|core| Self {
                core,
                poisoned: false,
            })
            .map_err(|e| to_py_err(py, e))
    }

    #[getter]
    fn block_size(&self) -> usize {
        self.core.block_size()
    }
    #[getter]
    fn num_gpu_blocks(&self) -> usize {
        self.core.num_gpu_blocks()
    }
    #[getter]
    fn num_cpu_blocks(&self) -> usize {
        self.core.num_cpu_blocks()
    }
    #[getter]
    fn num_free_gpu_blocks(&self) -> usize {
        self.core.num_free_gpu_blocks()
    }
    #[getter]
    fn num_free_cpu_blocks(&self) -> usize {
        self.core.num_free_cpu_blocks()
    }
    #[getter]
    fn watermark_blocks(&self) -> usize {
        self.core.watermark_blocks()
    }
    #[getter]
    fn prefix_caching(&self) -> bool {
        self.core.prefix_caching()
    }

    fn can_allocate(&self, num_tokens: Int<NumTokens>) -> bool {
        self.core.can_allocate(num_tokens.usize())
    }
    fn allocate(
        &mut self,
        py: Python<'_>,
        seq_id: Int<SeqId>,
        num_tokens: Int<NumTokens>,
    ) -> PyResult<Vec<u32>> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.allocate(seq_id.0, num_tokens.usize())
        })
    }
    /// Prefix caching: a new sequence reusing the longest cached chain of full blocks of
    /// `token_ids`; `(block table, tokens already cached)`.
    fn allocate_cached(
        &mut self,
        py: Python<'_>,
        seq_id: Int<SeqId>,
        token_ids: &Bound<'_, PyAny>,
    ) -> PyResult<(Vec<u32>, usize)> {
        let tokens = extract_tokens(token_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.allocate_cached(seq_id.0, &tokens)
        })
    }
    /// Prefix caching: register the full blocks of the sequence's computed `token_ids`.
    fn cache_full_blocks(
        &mut self,
        py: Python<'_>,
        seq_id: Int<SeqId>,
        token_ids: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let tokens = extract_tokens(token_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.cache_full_blocks(seq_id.0, &tokens)
        })
    }
    fn append_slot(
        &mut self,
        py: Python<'_>,
        seq_id: Int<SeqId>,
    ) -> PyResult<(u64, Option<(u32, u32)>)> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.append_slot(seq_id.0)
        })
    }
    fn can_append(&mut self, py: Python<'_>, seq_ids: &Bound<'_, PyAny>) -> PyResult<bool> {
        let ids = extract_ids(seq_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.can_append(&ids)
        })
    }
    fn step(&mut self, py: Python<'_>, seq_ids: &Bound<'_, PyAny>) -> PyResult<StepResult> {
        let ids = extract_ids(seq_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| c.step(&ids)).map(StepResult::from)
    }
    fn fork(
        &mut self,
        py: Python<'_>,
        parent_id: Int<ParentId>,
        child_id: Int<ChildId>,
    ) -> PyResult<()> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.fork(parent_id.0, child_id.0)
        })
    }
    fn free(&mut self, py: Python<'_>, seq_id: Int<SeqId>) -> PyResult<()> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| c.free(seq_id.0))
    }
    fn swap_out(
        &mut self,
        py: Python<'_>,
        seq_ids: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<(u32, u32)>> {
        let ids = extract_ids(seq_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| c.swap_out(&ids))
    }
    fn swap_in(&mut self, py: Python<'_>, seq_ids: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, u32)>> {
        let ids = extract_ids(seq_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| c.swap_in(&ids))
    }
    fn can_swap_in(&mut self, py: Python<'_>, seq_ids: &Bound<'_, PyAny>) -> PyResult<bool> {
        let ids = extract_ids(seq_ids)?;
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.can_swap_in(&ids)
        })
    }
    fn block_table(&mut self, py: Python<'_>, seq_id: Int<SeqId>) -> PyResult<Vec<u32>> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.block_table(seq_id.0).map(<[u32]>::to_vec)
        })
    }
    fn num_tokens(&mut self, py: Python<'_>, seq_id: Int<SeqId>) -> PyResult<usize> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.num_tokens(seq_id.0)
        })
    }
    fn is_swapped(&mut self, py: Python<'_>, seq_id: Int<SeqId>) -> PyResult<bool> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.is_swapped(seq_id.0)
        })
    }
    fn ref_count(&mut self, py: Python<'_>, block: Int<Block>) -> PyResult<u32> {
        guarded(py, &mut self.poisoned, &mut self.core, |c| {
            c.ref_count(block.u32())
        })
    }
    fn __contains__(&self, seq_id: Int<SeqId>) -> bool {
        self.core.contains(seq_id.0)
    }
    fn seq_ids(&self) -> Vec<u64> {
        self.core.seq_ids()
    }
    fn running_seq_ids(&self) -> Vec<u64> {
        self.core.running_seq_ids()
    }
    fn memory_bytes(&self) -> usize {
        self.core.memory_bytes()
    }
    fn check_invariants(&self) -> Vec<String> {
        self.core.check_invariants()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats::stats_dict(py, &self.core.stats())
    }

    /// Test hook: panics inside Rust, to show a panic arrives as RuntimeError and poisons the object.
    fn _debug_panic(&mut self, py: Python<'_>) -> PyResult<()> {
        guarded(
            py,
            &mut self.poisoned,
            &mut self.core,
            |_| -> KvResult<()> { panic!("deliberate test panic") },
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "BlockManager(num_gpu_blocks={}, block_size={}, free={}, seqs={})",
            self.core.num_gpu_blocks(),
            self.core.block_size(),
            self.core.num_free_gpu_blocks(),
            self.core.seq_ids().len()
        )
    }
}

#[pymodule]
fn titaninfer_kvcache(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LifoBlockAllocator>()?;
    m.add_class::<BuddyAllocator>()?;
    m.add_class::<BlockManager>()?;
    m.add_class::<StepResult>()?;
    m.add("OutOfBlocks", m.py().get_type::<OutOfBlocks>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
