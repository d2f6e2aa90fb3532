//! Python integers into the core's types: every integer argument is checked against its
//! `limits::IntSpec` as pyo3 extracts it, so an int outside the range (negative or >= 2**64
//! included) is a ValueError naming the argument, word for word the reference's; a non-integer
//! keeps pyo3's TypeError.

use std::marker::PhantomData;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::limits::{self, IntSpec};

/// An int within `spec`'s range; a non-integer keeps pyo3's TypeError.
#[inline]
fn checked_int(obj: &Bound<'_, PyAny>, spec: &IntSpec) -> PyResult<u64> {
    match obj.extract::<u64>() {
        Ok(v) => spec
            .check(v)
            .map_err(|e| PyValueError::new_err(e.to_string())),
        Err(e) => Err(range_error(obj, spec, e)),
    }
}

/// A failed u64 extraction as the error to raise: an int that does not fit (negative, >= 2**64)
/// is `spec`'s ValueError with the value as Python prints it; anything else is left as it is.
fn range_error(obj: &Bound<'_, PyAny>, spec: &IntSpec, e: PyErr) -> PyErr {
    if !e.is_instance_of::<PyOverflowError>(obj.py()) {
        return e;
    }
    match obj.str() {
        Ok(text) => PyValueError::new_err(spec.error(text).to_string()),
        Err(e) => e,
    }
}

pub trait Spec {
    const SPEC: &'static IntSpec;
}

/// An integer argument checked against `S::SPEC` when pyo3 extracts it, so the first bad argument
/// (in order) is the one reported, as in the reference.
pub struct Int<S>(pub u64, PhantomData<S>);

impl<S> Int<S> {
    pub const fn of(v: u64) -> Self {
        Self(v, PhantomData)
    }
    /// Lossless: every spec's upper bound fits the Rust type the core takes.
    pub fn usize(&self) -> usize {
        self.0 as usize
    }
    pub fn u32(&self) -> u32 {
        self.0 as u32
    }
}

impl<'a, 'py, S: Spec> FromPyObject<'a, 'py> for Int<S> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        checked_int(&obj, S::SPEC).map(Self::of)
    }
}

macro_rules! int_args {
    ($($ty:ident => $spec:ident),* $(,)?) => {
        $(pub struct $ty;
        impl Spec for $ty {
            const SPEC: &'static IntSpec = &limits::$spec;
        })*
    };
}

int_args!(
    NumGpuBlocks => NUM_GPU_BLOCKS, BlockSize => BLOCK_SIZE, NumCpuBlocks => NUM_CPU_BLOCKS,
    NumBlocks => NUM_BLOCKS, SeqId => SEQ_ID, ParentId => PARENT_ID, ChildId => CHILD_ID,
    NumTokens => NUM_TOKENS, Block => BLOCK, Start => START, RunLength => RUN_LENGTH,
);

const _: () = assert!(limits::SEQ_IDS.lo == 0 && limits::SEQ_IDS.hi == u64::MAX);

/// Sequence ids from a Python list (the scheduler's batch) without the generic iterator protocol;
/// any other iterable of ints is accepted too, as the reference's `list(seq_ids)` does.
pub fn extract_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    if let Ok(list) = obj.cast::<PyList>() {
        let mut ids = Vec::with_capacity(list.len());
        for item in list.iter() {
            // Every u64 is a valid id (asserted above), so only a failed extraction needs the spec.
            match item.extract::<u64>() {
                Ok(id) => ids.push(id),
                Err(e) => return Err(range_error(&item, &limits::SEQ_IDS, e)),
            }
        }
        return Ok(ids);
    }
    obj.try_iter()?
        .map(|item| checked_int(&item?, &limits::SEQ_IDS))
        .collect()
}

/// Token ids (prefix caching's block contents), each checked against `TOKEN_IDS` as the reference does.
pub fn extract_tokens(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(list) = obj.cast::<PyList>() {
        let mut tokens = Vec::with_capacity(list.len());
        for item in list.iter() {
            match item.extract::<u32>() {
                Ok(t) => tokens.push(t),
                Err(e) => return Err(range_error(&item, &limits::TOKEN_IDS, e)),
            }
        }
        return Ok(tokens);
    }
    obj.try_iter()?
        .map(|item| checked_int(&item?, &limits::TOKEN_IDS).map(|t| t as u32))
        .collect()
}
