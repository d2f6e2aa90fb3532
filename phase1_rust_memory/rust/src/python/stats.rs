//! `BlockManager.stats()` as the dict the reference returns (prefix-cache keys only when it is on).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::block_manager::Stats;

pub fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("num_gpu_blocks", s.num_gpu_blocks)?;
    d.set_item("free_gpu_blocks", s.free_gpu_blocks)?;
    d.set_item("used_gpu_blocks", s.used_gpu_blocks)?;
    d.set_item("num_cpu_blocks", s.num_cpu_blocks)?;
    d.set_item("free_cpu_blocks", s.free_cpu_blocks)?;
    d.set_item("num_running", s.num_running)?;
    d.set_item("num_swapped", s.num_swapped)?;
    d.set_item("shared_blocks", s.shared_blocks)?;
    d.set_item("stored_tokens", s.stored_tokens)?;
    d.set_item("allocated_slots", s.allocated_slots)?;
    d.set_item("unused_slots", s.unused_slots)?;
    d.set_item("largest_free_run", s.largest_free_run)?;
    d.set_item("external_fragmentation", s.external_fragmentation)?;
    d.set_item("table_contiguity", s.table_contiguity)?;
    d.set_item("cow_copies", s.cow_copies)?;
    d.set_item("preemptions", s.preemptions)?;
    d.set_item("swapped_out_blocks", s.swapped_out_blocks)?;
    d.set_item("swapped_in_blocks", s.swapped_in_blocks)?;
    if let Some(p) = &s.prefix {
        d.set_item("prefix_queries", p.queries)?;
        d.set_item("prefix_hits", p.hits)?;
        let rate = if p.queries == 0 {
            0.0
        } else {
            p.hits as f64 / p.queries as f64
        };
        d.set_item("prefix_hit_rate", rate)?;
        d.set_item("cached_blocks", p.cached_blocks)?;
        d.set_item("evictable_blocks", p.evictable_blocks)?;
        d.set_item("evictions", p.evictions)?;
    }
    Ok(d)
}
