"""Phase 1 benchmark: one 1000-request growth trace replayed on the Python reference and on the
chosen implementation through the same API, the steady-state waste of paging, and the stress runs.

All figures are CPU figures (the block manager is host code). P1.1 compares the batched API on both
sides (what a scheduler calls once per decode step); the per-call API is reported beside it.
"""

from __future__ import annotations

import cProfile
import io
import os
import platform
import pstats
import statistics
import time

from module0_profiling.targets import BenchResult, Comparison

from . import reference
from .errors import NativeExtensionMissing
from .stress import stress_allocator, stress_block_manager
from .trace import TraceSpec, bind, make_requests, per_call_steps, replay, simulate

SIZES = {
    # repeats of the timed replays (reference, implementation), stress operations
    "small": dict(ref_repeats=1, impl_repeats=2, stress_ops=100_000, fork_ops=20_000, alloc_ops=50_000),
    "full": dict(ref_repeats=3, impl_repeats=5, stress_ops=200_000, fork_ops=100_000, alloc_ops=200_000),
}


def _load(impl: str):
    from . import load_impl

    return load_impl(impl)


def _supports(fn) -> str | None:
    """None if ``fn()`` works, else the implementation's own reason."""
    try:
        fn()
    except NotImplementedError as e:
        return str(e)
    return None


def kv_bytes_per_block(block_size: int) -> int:
    """TinyLlama-1.1B bf16 K and V for ``block_size`` tokens, all layers."""
    from phase0_prototype.config import TINYLLAMA as c

    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * block_size


def _timed(make_manager, steps, api: str, repeats: int) -> tuple[float, list[float]]:
    best_total, best_steps = float("inf"), []
    totals = []
    for _ in range(repeats):
        per_step = replay(bind(make_manager(), steps, api))
        totals.append(sum(per_step))
        if totals[-1] < best_total:
            best_total, best_steps = totals[-1], per_step
    return statistics.median(totals), best_steps


def _profile(make_manager, steps, limit: int = 8) -> str:
    """cProfile of a batched replay: where the time goes, as a markdown table."""
    bound = bind(make_manager(), steps, "batched")
    prof = cProfile.Profile()
    prof.enable()
    replay(bound)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:limit]
    lines = ["| function | calls | own time | share |", "|---|---:|---:|---:|"]
    for (file, line, name), (_, ncalls, tottime, _, _) in rows:
        where = f"{os.path.basename(file)}:{line}({name})" if file != "~" else name
        lines.append(f"| `{where}` | {ncalls} | {tottime * 1e3:.1f} ms | {100 * tottime / total:.1f} % |")
    return "\n".join(lines)


def _steady_state(sim) -> dict[str, float]:
    s = sim.samples
    alloc = [x["allocated_slots"] for x in s]
    return {
        "unused_slot_fraction": sum(x["unused_slots"] for x in s) / max(1, sum(alloc)),
        "contiguous_waste_fraction": 1 - sum(x["stored_tokens"] for x in s) / max(1, sum(x["contiguous_reserved_slots"] for x in s)),
        "external_fragmentation": statistics.mean(x["external_fragmentation"] for x in s),
        "table_contiguity": statistics.mean(x["table_contiguity"] for x in s),
        "running_seqs": statistics.mean(x["num_running"] for x in s),
        "pool_used_fraction": statistics.mean(x["used_gpu_blocks"] / x["num_gpu_blocks"] for x in s),
    }


def _check_replay(ref_manager, sim) -> tuple[int, int]:
    """Replay the recorded calls on the reference; count step answers that differ. Also returns the
    reference's memory footprint at the middle of the trace."""
    mismatches, memory = 0, 0
    results = iter(sim.step_results)
    middle = len(sim.steps) // 2
    for i, ops in enumerate(sim.steps):
        for name, args in ops:
            out = getattr(ref_manager, name)(*args)
            if name == "step":
                r = next(results)
                mismatches += (out.slots, out.new_blocks, out.copies, out.preempted) != tuple(r)
        if i == middle:
            memory = ref_manager.memory_bytes()
    return mismatches, memory


def run(impl: str = "solution", size: str = "small") -> BenchResult:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got '{size}'")
    cfg = SIZES[size]
    res = BenchResult()
    try:
        mod = _load(impl)
        no_buddy = _supports(lambda: mod.BuddyAllocator(8))
        no_fork_probe = mod.BlockManager(8, 4)
        no_fork_probe.allocate(0, 1)
        no_fork = _supports(lambda: no_fork_probe.fork(0, 1))
    except NativeExtensionMissing as e:
        for m in ("speedup_batched", "unused_slot_fraction", "stress_violations", "run_violations", "fork_violations"):
            res.skip(m, str(e))
        return res
    allocator = "lifo" if no_buddy else "buddy"
    spec = TraceSpec()
    requests = make_requests(spec)

    def make(cls):
        return lambda: cls(spec.num_gpu_blocks, spec.block_size, policy="preempt", **({} if no_buddy else {"allocator": "buddy"}))

    make_impl = make(mod.BlockManager)

    def make_ref():
        return reference.BlockManager(spec.num_gpu_blocks, spec.block_size, policy="preempt", allocator=allocator)

    t0 = time.perf_counter()
    sim = simulate(make_impl(), spec, requests)
    sim_seconds = time.perf_counter() - t0
    mismatches, ref_memory = _check_replay(make_ref(), sim)
    res.metrics["trace_mismatches"] = mismatches

    timings = {}
    for api, steps in (("batched", sim.steps), ("per_call", per_call_steps(sim))):
        timings[("reference", api)] = _timed(make_ref, steps, api, cfg["ref_repeats"])
        timings[(impl, api)] = _timed(make_impl, steps, api, cfg["impl_repeats"])
    work = sim.work_items
    for api in ("batched", "per_call"):
        ref_t, impl_t = timings[("reference", api)][0], timings[(impl, api)][0]
        res.metrics[f"speedup_{api}"] = ref_t / impl_t
        res.metrics[f"ops_per_s_reference_{api}"] = work / ref_t
        res.metrics[f"ops_per_s_impl_{api}"] = work / impl_t
        for who, key in (("reference", "reference"), (impl, "impl")):
            per_step = sorted(timings[(who, api)][1])
            res.metrics[f"step_us_median_{key}_{api}"] = 1e6 * statistics.median(per_step)
            res.metrics[f"step_us_p99_{key}_{api}"] = 1e6 * per_step[int(0.99 * (len(per_step) - 1))]
        for who in ("reference", impl):
            res.comparisons.append(Comparison(f"{who} ({'Python' if who == 'reference' else 'this impl'}), {api} API",
                                              timings[(who, api)][0], note=f"{work / timings[(who, api)][0] / 1e6:.2f} M ops/s"))

    steady = _steady_state(sim)
    res.metrics.update(steady)
    impl_memory = sim.peak_memory_bytes
    res.metrics["memory_bytes_impl"] = impl_memory
    res.metrics["memory_bytes_reference"] = ref_memory

    # P1.3: stress with outside checks. Fork and contiguous runs only where the implementation has them.
    bm = stress_block_manager(mod.BlockManager, cfg["stress_ops"], seed=1, fork=False)
    lifo = stress_allocator(mod.LifoBlockAllocator, cfg["alloc_ops"], seed=2, max_run=1)
    res.metrics["stress_ops"] = bm.ops + lifo.ops
    res.metrics["stress_violations"] = len(bm.violations) + len(lifo.violations)
    stress_rows = [("block manager, no fork", bm), ("LIFO allocator", lifo)]
    if no_buddy:
        res.skip("run_violations", f"no contiguous runs: {no_buddy}")
    else:
        runs = stress_allocator(mod.BuddyAllocator, cfg["alloc_ops"], seed=3, max_run=64)
        res.metrics["run_violations"] = len(runs.violations)
        stress_rows.append(("buddy allocator, runs of 1-64", runs))
    if no_fork:
        res.skip("fork_violations", f"no fork: {no_fork}")
    else:
        fk = stress_block_manager(mod.BlockManager, cfg["fork_ops"], seed=4, fork=True)
        res.metrics["fork_violations"] = len(fk.violations)
        stress_rows.append(("block manager with fork + copy-on-write", fk))

    res.tables["Trace"] = _trace_table(spec, sim, sim_seconds, mismatches, allocator)
    res.tables["Replay: Python reference vs this implementation"] = _replay_table(res.metrics, impl)
    res.tables["Steady state: paged vs contiguous allocation"] = _steady_table(steady, spec, impl_memory, ref_memory)
    res.tables["Stress (P1.3)"] = _stress_table(stress_rows)
    subset = sim.steps[: len(sim.steps) // 4]
    res.tables["cProfile: Python reference, batched replay (first quarter of the trace)"] = _profile(make_ref, subset)
    res.tables[f"cProfile: {impl}, batched replay (same steps)"] = _profile(make_impl, subset)
    for reason in (no_buddy, no_fork):
        if reason:
            res.notes.append(f"{impl}: {reason}")
    if mismatches:
        res.notes.append(f"{mismatches} steps of the trace gave different answers from the Python reference")
    res.trace_region = "none: this phase is host code (no GPU kernels); see the cProfile tables"
    res.ncu_reason = "no GPU kernels in this phase: the block manager is host code (see the cProfile tables)"
    res.context = {
        "implementation": impl, "reference": f"phase1_rust_memory.reference (allocator={allocator})",
        "requests": spec.num_requests, "block_size": spec.block_size, "gpu_blocks": spec.num_gpu_blocks,
        "max_batch": spec.max_batch, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    return res


def _trace_table(spec, sim, seconds, mismatches, allocator) -> str:
    return "\n".join([
        "| requests | prompt tokens | output tokens | arrivals | block | GPU blocks | steps | tokens appended | calls | preemptions | answers ≠ reference |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {spec.num_requests} | {spec.prompt_range[0]}–{spec.prompt_range[1]} | {spec.output_range[0]}–{spec.output_range[1]} "
        f"| Poisson {spec.arrivals_per_step}/step | {spec.block_size} | {spec.num_gpu_blocks} | {len(sim.steps)} "
        f"| {sim.num_tokens_appended} | {sim.num_calls} | {sim.preemptions} | {mismatches} |",
        "",
        f"Simulated once with the implementation under test in {seconds:.2f} s; the reference "
        f"(allocator={allocator}) replayed the recorded calls and had to give the same answers.",
    ])


def _replay_table(m, impl) -> str:
    rows = ["| API | Python reference M ops/s | {0} M ops/s | speed-up | step median (ref / {0}) | step p99 (ref / {0}) |".format(impl),
            "|---|---:|---:|---:|---:|---:|"]
    for api in ("batched", "per_call"):
        rows.append(
            f"| {api} | {m[f'ops_per_s_reference_{api}'] / 1e6:.2f} | {m[f'ops_per_s_impl_{api}'] / 1e6:.2f} "
            f"| {m[f'speedup_{api}']:.1f}× | {m[f'step_us_median_reference_{api}']:.1f} / {m[f'step_us_median_impl_{api}']:.1f} µs "
            f"| {m[f'step_us_p99_reference_{api}']:.1f} / {m[f'step_us_p99_impl_{api}']:.1f} µs |")
    rows.append("\nAn op is one token slot appended or one allocate / free / can_allocate call; both APIs do the same ops.")
    return "\n".join(rows)


def _steady_table(s, spec, impl_memory, ref_memory) -> str:
    block_bytes = kv_bytes_per_block(spec.block_size)
    max_context = spec.prompt_range[1] + spec.output_range[1]
    return "\n".join([
        "| quantity | value |", "|---|---:|",
        f"| running sequences (mean) | {s['running_seqs']:.0f} |",
        f"| pool in use (mean) | {100 * s['pool_used_fraction']:.1f} % |",
        f"| paged: slots allocated but unused (P1.2) | {100 * s['unused_slot_fraction']:.2f} % |",
        f"| contiguous, reserving {max_context} tokens per sequence: slots unused | {100 * s['contiguous_waste_fraction']:.1f} % |",
        f"| external fragmentation of the free pool (1 − largest run / free) | {100 * s['external_fragmentation']:.1f} % |",
        f"| block-table contiguity (adjacent entries that are adjacent blocks) | {100 * s['table_contiguity']:.1f} % |",
        f"| TinyLlama bf16 KV bytes per block | {block_bytes / 1024:.0f} KiB |",
        f"| manager state: implementation / Python reference | {impl_memory / 1024:.0f} KiB / {ref_memory / 1024:.0f} KiB |",
        f"| manager state per KV block held | {impl_memory / max(1, s['pool_used_fraction'] * spec.num_gpu_blocks):.1f} B |",
    ])


def _stress_table(rows) -> str:
    out = ["| run | ops | violations | refused (OutOfBlocks) | preempted | forks | CoW copies |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        out.append(f"| {name} | {r.ops} | {len(r.violations)} | {r.refused} | {r.preempted} | {r.forks} | {r.copies} |")
        out.extend(f"| ↳ {v} | | | | | | |" for v in r.violations[:3])
    return "\n".join(out)
