"""Phase 2 bench: framework (v1) vs v2 vs solution (v3) vs eager / torch.compile / liger / FlashInfer vs the copy roofline.

``run(impl, size)`` (the check runner's entry point) measures in ONE process:
- P2.1 correctness of the CUDA kernels (framework, v2 ``staged`` and ``impl``) against the PyTorch reference;
- P2.5's precondition: ``impl``'s output equals FlashInfer's on the main shape's inputs (a mismatch
  is a FAIL note and fails P2.5; the timing still runs, labelled);
- the main shape (16384 tokens, q 32 heads, k 4 heads, head_dim 64, bf16, random positions):
  time of ``impl``, framework, v2 and the peers, rotating among input sets ≥ 3× L2 so DRAM is measured;
- a token sweep 1…65536 and a launch-configuration sweep of the solution kernel;
- a torch.profiler trace of ``impl``, CuPy's kernel attributes, and ncu metrics when ncu is present.
On CPU only the reference is checked and timed; every GPU metric is skipped with the reason.
``python -m phase2_rope_cuda.bench [--impl solution] [--size full|small]`` prints the metrics.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from module0_profiling.timing import time_fn
from module0_profiling.trace import ncu_status, profile_region, run_ncu
from phase2_rope_cuda import load_impl, reference
from phase2_rope_cuda.bench_tables import correctness_table, kernel_attribute_table
from phase2_rope_cuda.peers import (
    compiled_peer,
    eager_peer,
    flashinfer_agreement,
    flashinfer_peers,
    liger_peer,
    prepare_liger,
)
from phase2_rope_cuda.workload import (
    TOLERANCE,
    RopeShape,
    counted_bytes,
    counted_flops,
    error_ratio,
    input_sets,
    make_inputs,
)

FULL = RopeShape()
GPU_SMALL = RopeShape(tokens=2048, max_position=4096)
CPU_SMALL = RopeShape(tokens=64, q_heads=8, kv_heads=2, head_dim=64, dtype=torch.float32, max_position=2048)
SWEEP_TOKENS_FULL = (1, 17, 256, 1000, 4097, 16384, 65536)
SWEEP_TOKENS_SMALL = (1, 1000, 4097)
GPU_METRICS = [
    "p2_1_max_err_ratio", "p2_2_speedup_vs_framework", "p2_3_fraction_of_copy",
    "p2_4_speedup_vs_compile", "p2_4_speedup_vs_liger", "p2_5_fraction_of_flashinfer", "p2_5_flashinfer_err_ratio",
]
FLASHINFER_METRICS = ("p2_5_fraction_of_flashinfer", "p2_5_flashinfer_err_ratio")


def reference_self_check(device: str) -> float:
    """The reference vs a float64 complex rotation (fp32 inputs, fp32 tolerance): error / tolerance."""
    shape = CPU_SMALL
    x = make_inputs(shape, device, seed=7)
    q_ref, k_ref = reference.apply_rope_reference(*x.args)
    inv_freq = reference.inverse_frequencies(shape.head_dim).to(device)
    atol, rtol = 1e-5, 1e-5
    return max(
        error_ratio(q_ref, reference.apply_rope_complex_f64(x.q, x.positions, inv_freq), atol, rtol),
        error_ratio(k_ref, reference.apply_rope_complex_f64(x.k, x.positions, inv_freq), atol, rtol),
    )


def kernel_correctness(impls: dict, rows: list) -> float:
    """Max error / tolerance of each CUDA impl over dtypes × head_dims × odd sizes × layouts."""
    worst = 0.0
    for name, module in impls.items():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for head_dim in (64, 128):
                for tokens, fused in ((1, False), (7, False), (1001, False), (333, True)):
                    shape = RopeShape(tokens=tokens, head_dim=head_dim, dtype=dtype, max_position=5000)
                    x = make_inputs(shape, "cuda", seed=tokens * 31 + head_dim)
                    if fused:  # q, k as strided views of a fused QKV output, int32 positions
                        qkv = torch.cat([x.q.flatten(1), x.k.flatten(1), x.k.flatten(1)], dim=1)
                        q = qkv[:, : x.q[0].numel()].view_as(x.q)
                        k = qkv[:, x.q[0].numel(): x.q[0].numel() + x.k[0].numel()].view_as(x.k)
                        x.q, x.k, x.positions = q, k, x.positions.int()
                    q_exp, k_exp = reference.apply_rope_reference(x.q.clone(), x.k.clone(), x.positions, x.cache)
                    try:
                        module.apply_rope_(*x.args)
                        torch.cuda.synchronize()
                        ratio = max(error_ratio(x.q, q_exp, *TOLERANCE[dtype]), error_ratio(x.k, k_exp, *TOLERANCE[dtype]))
                        note = ""
                    except Exception as e:  # a learner's kernel that refuses a case fails P2.1, visibly
                        ratio, note = float("inf"), f"{type(e).__name__}: {str(e)[:60]}"
                    rows.append((name, str(dtype).replace("torch.", ""), head_dim, tokens, "fused qkv, int32" if fused else "contiguous, int64", ratio, note))
                    worst = max(worst, ratio)
    return worst


def timed(fn, sets, warmup: int = 5, iters: int = 25) -> float:
    """Median seconds per call; 4 calls per timed sample so one slow host call does not idle the GPU."""
    return time_fn(fn, inputs=sets, warmup=warmup, iters=iters, device="cuda", calls_per_sample=4).median


def measure_versions(module, framework, shape: RopeShape, l2_bytes: float, peers: dict) -> dict[str, float]:
    """Median seconds per call of each version on ``shape``, rotating among input sets."""
    sets = input_sets(shape, "cuda", l2_bytes)
    times = {"impl": timed(lambda x: module.apply_rope_(*x.args), sets)}
    if framework is not module:
        times["framework"] = timed(lambda x: framework.apply_rope_(*x.args), sets)
    for name, fn in peers.items():
        if name == "liger":
            prepare_liger(sets)
        times[name] = timed(fn, sets, warmup=3 if name != "torch.compile" else 8)
    times["bytes"] = counted_bytes(shape, sum(x.distinct_positions for x in sets) / len(sets))
    return times


def run(impl: str = "solution", size: str = "full") -> BenchResult:
    device = detect_device()
    module = load_impl(impl)
    result = BenchResult()
    result.metrics["reference_err_ratio"] = reference_self_check("cuda" if device.is_cuda else "cpu")
    if not device.is_cuda:
        return _cpu_run(result, device)
    shape = FULL if size == "full" else GPU_SMALL
    framework = load_impl("framework")
    peaks = measured_peaks(device)
    l2_bytes = (device.l2_mb or 50) * 2**20
    result.context.update(device=device.name, shape=shape.describe(), impl=impl, size=size,
                          positions=f"uniform random in [0, {shape.max_position})",
                          cos_sin_cache=f"[{shape.max_position}, {shape.head_dim}] fp32, cos | sin halves",
                          torch=torch.__version__)

    _ncu(result, impl)  # first, while this process has run nothing but the peak measurement
    rows: list = []
    staged = load_impl("phase2_rope_cuda.staged")
    impls = {"framework": framework, "v2 shared": staged}
    impls.setdefault(impl, module)
    result.metrics["p2_1_max_err_ratio"] = kernel_correctness(impls, rows)
    result.tables["P2.1 correctness (error / tolerance, ≤ 1 passes)"] = correctness_table(rows)

    peers, reasons = {}, {}
    if staged is not module:
        peers["v2 shared"] = lambda x: staged.apply_rope_(*x.args)
    for name, builder in (("eager", eager_peer), ("torch.compile", compiled_peer), ("liger", liger_peer)):
        fn, why = builder()
        if fn is None:
            reasons[name] = why
        else:
            peers[name] = fn
    fi_peers, fi_reason = flashinfer_peers()
    peers.update(fi_peers)
    _flashinfer_agreement(result, module, fi_peers, fi_reason, shape)
    t = measure_versions(module, framework, shape, l2_bytes, peers)
    nbytes, flops = t.pop("bytes"), counted_flops(shape)
    gbps = {name: nbytes / s / 1e9 for name, s in t.items()}
    for name, s in t.items():
        label = impl if name == "impl" else name
        result.comparisons.append(Comparison(label, s, work_bytes=nbytes, work_flops=flops, note=f"{gbps[name]:.0f} GB/s"))
        result.roofline.append(RooflinePoint(label, flops, nbytes, s))
        result.metrics[f"gbps_{label}"] = gbps[name]
    result.metrics["copy_gbps"] = peaks.copy_gbps
    result.metrics["p2_3_fraction_of_copy"] = gbps["impl"] / peaks.copy_gbps
    result.metrics["p2_2_speedup_vs_framework"] = t.get("framework", t["impl"]) / t["impl"]
    for metric, peer in (("p2_4_speedup_vs_compile", "torch.compile"), ("p2_4_speedup_vs_liger", "liger")):
        if peer in t:
            result.metrics[metric] = t[peer] / t["impl"]
        else:
            result.skip(metric, reasons.get(peer, f"{peer} was not measured"))
    fi_times = [t[n] for n in fi_peers if n in t]
    if fi_times:  # the faster of FlashInfer's two calls is the yardstick
        result.metrics["p2_5_fraction_of_flashinfer"] = min(fi_times) / t["impl"]
    result.context["bytes_counted"] = f"{nbytes / 1e6:.1f} MB per call (q,k read+write, cos/sin rows of distinct positions)"

    _sweeps(result, module, framework, peers, shape, size, l2_bytes, impl)
    _profile(result, module, shape, impl)
    if result.trace is not None and result.trace.kernels:
        gpu_per_call = sum(k.total_s for k in result.trace.kernels) / max(1, result.trace.iters)
        result.metrics["gbps_kernels_only"] = nbytes / gpu_per_call / 1e9
        result.notes.append(
            f"Kernel time alone (profiler, {impl}): {gpu_per_call * 1e6:.1f} µs per call = "
            f"{nbytes / gpu_per_call / 1e9:.0f} GB/s, {nbytes / gpu_per_call / 1e9 / peaks.copy_gbps:.0%} of copy; "
            f"end to end (CUDA events, host included): {t['impl'] * 1e6:.1f} µs."
        )
    return result


def _sweeps(result, module, framework, peers, shape, size, l2_bytes, impl) -> None:
    from phase2_rope_cuda.bench_tables import launch_sweep_table, token_sweep_table

    lines = []
    for tokens in SWEEP_TOKENS_FULL if size == "full" else SWEEP_TOKENS_SMALL:
        s = shape.with_tokens(tokens)
        t = measure_versions(module, framework, s, l2_bytes, peers)
        lines.append((tokens, t))
    result.tables["Token sweep (GB/s of counted bytes; median time)"] = token_sweep_table(lines, impl)
    result.tables["Host cost per call (1 token)"] = _host_table(module, framework, peers)
    if hasattr(module, "LaunchConfig"):
        result.tables["Launch configuration sweep (solution kernel, main shape)"] = launch_sweep_table(module, shape, l2_bytes)


def _host_table(module, framework, peers) -> str:
    from module0_profiling.cudac import launch
    from phase2_rope_cuda.bench_tables import host_overhead_table
    from phase2_rope_cuda.cuda_launch import VECTORIZED_FILE, get_kernel

    x = make_inputs(RopeShape(tokens=1, max_position=4096), "cuda", seed=1)
    kernel = get_kernel(VECTORIZED_FILE, "rope_v3_bf16_hd64_pos64", x.q.device)
    raw_args = (x.q.data_ptr(), x.k.data_ptr(), x.positions.data_ptr(), x.cache.data_ptr(),
                np.int32(1), np.int32(32), np.int32(4), np.int64(2048), np.int64(64), np.int64(256), np.int64(64))
    versions = {
        "module.apply_rope_ (impl)": lambda x: module.apply_rope_(*x.args),
        "framework.apply_rope_": lambda x: framework.apply_rope_(*x.args),
        "cudac.launch of the v3 kernel alone": lambda x: launch(kernel, (1,), (72, 4), raw_args),
        **{name: fn for name, fn in peers.items()},
    }
    if "liger" in peers:
        prepare_liger([x])
    return host_overhead_table(versions, x)


def _profile(result, module, shape, impl) -> None:
    x = make_inputs(shape, "cuda", seed=5)
    result.trace = profile_region(lambda: module.apply_rope_(*x.args), iters=20, warmup=3)
    result.trace_region = f"20 calls of {impl}.apply_rope_ on {shape.describe()}"
    result.tables["Kernel attributes (CuPy / NVRTC)"] = kernel_attribute_table()


def _flashinfer_agreement(result: BenchResult, module, fi_peers: dict, reason: str, shape: RopeShape) -> None:
    """P2.5's precondition, before any timing: ``impl`` and FlashInfer give the same q, k on one input set."""
    if not fi_peers:
        for metric in FLASHINFER_METRICS:
            result.skip(metric, reason)
        return
    ratio = flashinfer_agreement(module.apply_rope_, fi_peers["flashinfer"], make_inputs(shape, "cuda", seed=11))
    result.metrics["p2_5_flashinfer_err_ratio"] = ratio
    if ratio > 1:
        result.notes.append(f"FAIL: our RoPE and FlashInfer's disagree on the main shape ({ratio:.3g} × tolerance); "
                            "the FlashInfer timings below compare different outputs.")


def _ncu(result, impl: str) -> None:
    reason = ncu_status()
    if reason:
        result.ncu_reason = reason
        return
    code = f"from phase2_rope_cuda.bench import ncu_workload; ncu_workload({impl!r})"
    try:
        result.ncu = run_ncu(code, kernel_regex="rope_v", launch_count=3, timeout_s=90)
    except Exception as e:  # permissions (ERR_NVGPUCTRPERM), timeouts: report, do not fail the bench
        result.ncu_reason = f"ncu failed: {str(e)[:200]}"


def ncu_workload(impl: str) -> None:
    """What ncu profiles: the framework (two rope_v1 launches) then ``impl`` once, main shape."""
    x = make_inputs(FULL, "cuda", seed=9)
    load_impl("framework").apply_rope_(*x.args)
    load_impl(impl).apply_rope_(*x.args)
    torch.cuda.synchronize()


def _cpu_run(result: BenchResult, device) -> BenchResult:
    reason = f"needs a CUDA GPU: the kernels are CUDA C built with NVRTC (this machine: {device.name})"
    for metric in GPU_METRICS:
        result.skip(metric, reason)
    shape = CPU_SMALL
    x = make_inputs(shape, "cpu", seed=3)
    t = time_fn(lambda: reference.apply_rope_reference(*x.args), warmup=2, iters=10, device="cpu").median
    nbytes = counted_bytes(shape, x.distinct_positions)
    result.comparisons.append(Comparison("reference (CPU)", t, work_bytes=nbytes, work_flops=counted_flops(shape)))
    result.roofline.append(RooflinePoint("reference (CPU)", counted_flops(shape), nbytes, t))
    result.trace = profile_region(lambda: reference.apply_rope_reference(*x.args), iters=5, warmup=1)
    result.trace_region = f"5 calls of the PyTorch reference on CPU, {shape.describe()}"
    result.ncu_reason = reason
    result.context.update(device=device.name, shape=shape.describe(), note="CPU: reference correctness only")
    result.notes.append("CPU run: only the PyTorch reference was checked (vs a float64 complex rotation); "
                        "P2.1–P2.4 need a CUDA GPU.")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase2_rope_cuda.bench")
    ap.add_argument("--impl", default="solution")
    ap.add_argument("--size", default="full", choices=["full", "small"])
    args = ap.parse_args(argv)
    from phase2_rope_cuda.checks import TARGETS

    result = run(args.impl, args.size)
    for key, value in sorted(result.metrics.items()):
        print(f"{key:32s} {value:.4g}")
    for title, body in result.tables.items():
        print(f"\n## {title}\n{body}")
    print()
    for target in TARGETS:
        o = target.evaluate(result)
        print(f"{target.id:11s} {target.threshold:14s} {o.measured:12s} {o.status_text}")
    if result.ncu:
        for k in result.ncu:
            print(f"ncu {k.name[:40]:40s} dram {k.dram_pct} % occ {k.occupancy_pct} % regs {k.registers}")
    else:
        print(f"ncu: {result.ncu_reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
