"""Phase 7 measurements for P7.1–P7.4 (``module0_profiling.targets`` contract).

- **P7.1** (any machine): the implementation vs ``diffusers``' ``DiTTransformer2DModel`` with the same fp32
  weights on fresh random latents, timesteps and labels: max |error| / max |reference|. ``full``: DiT-XL/2 at
  256 px (on the GPU with TF32 off); ``small``: the ``tiny`` preset on the CPU.
- **P7.2** (any machine): SP = 2 and 4 gloo ranks on the CPU (Ulysses and ring) vs SP = 1, fp32, same weights.
- **P7.3** (GPU): one denoising step (batch 2: classifier-free guidance), bf16, DiT-XL/2 at 1,024 px (4,096
  tokens): the framework vs the implementation, timed in one run; the sweep over the lesson's sequence lengths;
  and the share of the measured bf16 matmul peak that the step's matmul and attention kernels reach (their
  counted FLOPs over their kernel time in the profiler, so elementwise kernels do not dilute it).
- **P7.4** (two GPUs): Ulysses SP = 2 (NCCL) vs SP = 1 at 4,096 tokens.
Beside them: phase 6's α-β model's prediction of Ulysses vs ring (``sp_cost``), and an LLM decode GEMV on the
same roofline (memory-bound) beside the DiT step (compute-bound).
"""

from __future__ import annotations

import sys
import time

import torch

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.roofline import gemv_bytes, gemv_flops
from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from module0_profiling.timing import time_fn
from module0_profiling.trace import profile_region
from phase6_tensor_parallel.bench import guarded
from phase6_tensor_parallel.dist_env import TPError, spawn
from phase7_dit_parallel import LATENT_SIZES, PRESETS, load_impl
from phase7_dit_parallel.flops import step_flops
from phase7_dit_parallel.oracle import to_diffusers
from phase7_dit_parallel.sp_cost import crossover_table
from phase7_dit_parallel.testing import random_inputs, relative_error, sp_rank
from phase7_dit_parallel.weights import random_weights

SHAPES = {
    "full": dict(preset="xl2", batch=2, p7_3_latent=LATENT_SIZES["1024px"], sweep=list(LATENT_SIZES.values()),
                 oracle_preset="xl2", oracle_latent=LATENT_SIZES["256px"], sp_preset="tiny", sp_latent=16),
    "small": dict(preset="tiny", batch=2, p7_3_latent=16, sweep=[8, 16], oracle_preset="tiny", oracle_latent=8,
                  sp_preset="tiny", sp_latent=8),
}
GPU_KIND_2 = "nvidia-h100-x2"
# Kernel names of the step's matmuls (cuBLAS/CUTLASS, inductor's templates) and fused attention (flash, cuDNN,
# memory-efficient): the FLOP-carrying kernels of P7.3's efficiency.
MATMUL_KERNELS = ("gemm", "sm90", "sm80", "nvjet", "cutlass", "xmma", "triton_tem", "mm_")
ATTENTION_KERNELS = ("flash", "fmha", "attention", "cudnn", "attn")


def progress(message: str) -> None:
    print(f"[phase7 bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def oracle_parity(impl: str, shapes: dict, device: str, result: BenchResult) -> None:
    """P7.1: the implementation (fp32, one device, no compile) vs diffusers on the same weights."""
    config = PRESETS[shapes["oracle_preset"]]
    weights = random_weights(config, seed=7, device=device)
    latents, t, y = random_inputs(config, 2, shapes["oracle_latent"], seed=8, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            ours = load_impl(impl).build(weights, compile=False)(latents, t, y)
            reference = to_diffusers(weights, shapes["oracle_latent"])(latents, timestep=t, class_labels=y).sample
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    result.metrics["p7_1_rel_err"] = relative_error(ours, reference)
    result.context["p7_1_shape"] = f"{shapes['oracle_preset']}, batch 2, latent {shapes['oracle_latent']}², fp32"


def sp_parity(impl: str, shapes: dict, result: BenchResult) -> None:
    """P7.2: SP = 2 and 4 gloo ranks (Ulysses, ring) vs this process at SP = 1."""
    config = PRESETS[shapes["sp_preset"]]
    weights = random_weights(config, seed=11)
    latents, t, y = random_inputs(config, 2, shapes["sp_latent"], seed=12)
    with torch.no_grad():
        single = load_impl("framework").build(weights, compile=False)(latents, t, y)
    errors = {"ulysses": 0.0, "ring": 0.0}
    for world in (2, 4):
        progress(f"P7.2 SP={world} on {world} gloo ranks, {shapes['sp_preset']}")
        for parallel in errors:
            try:
                ranks = spawn(sp_rank, world, impl, shapes["sp_preset"], 11, latents, t, y, parallel,
                              timeout_s=180)
            except TPError as e:  # an implementation that refuses a group fails P7.2 (the framework does)
                errors[parallel] = float("inf")
                result.notes.append(f"P7.2 {parallel} SP={world}: {str(e).splitlines()[0]}")
                continue
            errors[parallel] = max([errors[parallel]] + [relative_error(r, single) for r in ranks])
    result.metrics["p7_2_ulysses_rel_err"] = errors["ulysses"]
    result.metrics["p7_2_ring_rel_err"] = errors["ring"]
    result.context["p7_2_shape"] = (f"{shapes['sp_preset']}, batch 2, latent {shapes['sp_latent']}² "
                                    f"({config.tokens(shapes['sp_latent'])} tokens), fp32, SP = 2 and 4, gloo")


def kernel_share(summary, patterns: tuple[str, ...]) -> float:
    """Kernel seconds (per profiled iteration) of the kernels whose names contain one of ``patterns``."""
    total = sum(k.total_s for k in summary.kernels if any(p in k.name.lower() for p in patterns))
    return total / max(summary.iters, 1)


def framework_seconds(framework, inputs, device: str) -> float | None:
    """The framework's step time, or None where its ``[B, heads, S, S]`` scores do not fit in memory."""
    try:
        return time_fn(lambda: framework(*inputs), warmup=1, iters=3, device=device).median
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def step_timings(impl: str, shapes: dict, device: str, result: BenchResult) -> None:
    """P7.3: framework vs implementation per sequence length (batch 2; bf16 on a GPU, fp32 on a CPU, where
    the table and the trace are filled but the targets' metrics are not: CPU timings say nothing of P7.3)."""
    peaks = measured_peaks()
    config = PRESETS[shapes["preset"]]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    weights = random_weights(config, seed=3, dtype=dtype, device=device)
    framework = load_impl("framework").build(weights)
    ours = load_impl(impl).build(weights)
    batch, peak = shapes["batch"], peaks.matmul_tflops
    rows = ["| latent | tokens | framework | solution | speed-up | solution TFLOP/s | of measured peak |",
            "|---|---|---|---|---|---|---|"]
    for latent in shapes["sweep"]:
        tokens = config.tokens(latent)
        inputs = random_inputs(config, batch, latent, seed=latent, device=device, dtype=dtype)
        counted = step_flops(config, batch, tokens)
        progress(f"P7.3 step at {tokens} tokens: framework, then {impl}")
        with torch.no_grad():
            slow = framework_seconds(framework, inputs, device)
            fast = time_fn(lambda x=inputs: ours(*x), warmup=3, iters=10, device=device).median
        rate = counted["total"] / fast / 1e12
        slow_cells = (f"{slow * 1e3:.1f} ms", f"{slow / fast:.2f}×") if slow else ("out of memory", "—")
        rows.append(f"| {latent}² | {tokens:,} | {slow_cells[0]} | {fast * 1e3:.1f} ms | {slow_cells[1]} | "
                    f"{rate:.1f} | {100 * rate / peak:.0f} % |")
        result.roofline.append(RooflinePoint(f"DiT step, {tokens} tokens ({impl})", counted["total"],
                                             weights.num_parameters() * weights.dtype.itemsize, fast))
        if latent != shapes["p7_3_latent"] or slow is None:
            continue
        result.comparisons += [Comparison(f"framework step, {tokens} tokens", slow, work_flops=counted["total"]),
                               Comparison(f"{impl} step, {tokens} tokens", fast, work_flops=counted["total"])]
        with torch.no_grad():
            summary = profile_region(lambda x=inputs: ours(*x), iters=3, warmup=1)
        result.trace, result.trace_region = summary, f"3 denoising steps of the {impl}, {tokens} tokens"
        if device == "cuda":
            kernel_s = kernel_share(summary, MATMUL_KERNELS + ATTENTION_KERNELS)
            work = counted["attention"] + counted["mlp"] + counted["projections"]
            result.metrics["p7_3_step_speedup"] = slow / fast
            result.metrics["p7_3_attn_mlp_of_peak"] = work / kernel_s / 1e12 / peak
            result.context["p7_3_kernel_time"] = (f"{kernel_s * 1e3:.2f} ms of matmul + attention kernels in a "
                                                  f"{fast * 1e3:.2f} ms step")
    result.tables[f"denoising step vs sequence length ({str(dtype)[6:]}, batch {batch})"] = "\n".join(rows)
    # The LLM side of the roofline: one decode GEMV of TinyLlama's MLP (batch 1), memory-bound.
    w = torch.randn(5632, 2048, dtype=dtype, device=device)
    x = torch.randn(2048, 1, dtype=dtype, device=device)
    gemv_s = time_fn(lambda: w @ x, warmup=5, iters=50, device=device).median
    result.roofline.append(RooflinePoint("LLM decode GEMV, batch 1 (TinyLlama MLP)", gemv_flops(5632, 2048),
                                         gemv_bytes(5632, 2048, weight_bytes=x.element_size(),
                                                    act_bytes=x.element_size()), gemv_s))


def ulysses_two_gpus(impl: str, shapes: dict, result: BenchResult) -> None:
    """P7.4: Ulysses SP = 2 on two GPUs (NCCL) vs SP = 1 on one, 4,096 tokens, bf16."""
    config = PRESETS[shapes["preset"]]
    inputs = random_inputs(config, shapes["batch"], shapes["p7_3_latent"], seed=5, dtype=torch.bfloat16)
    times = spawn(sp_rank, 2, impl, shapes["preset"], 3, *inputs, "ulysses", device="cuda", timeout_s=500,
                  kwargs={"time_steps": 10})
    weights = random_weights(config, seed=3, dtype=torch.bfloat16, device="cuda")
    one = load_impl(impl).build(weights)
    cuda_inputs = [i.cuda() for i in inputs]
    with torch.no_grad():
        single = time_fn(lambda: one(*cuda_inputs), warmup=3, iters=10).median
    result.metrics["p7_4_ulysses_speedup"] = single / max(times)


def run(impl: str, size: str) -> BenchResult:
    info = detect_device()
    if size == "full" and not info.is_cuda:
        raise SystemExit("SIZE=full times DiT-XL/2 up to 16,384 tokens and needs a CUDA GPU: use SIZE=small")
    shapes = SHAPES[size]
    device = "cuda" if info.is_cuda else "cpu"
    gpus = torch.cuda.device_count() if info.is_cuda else 0
    result = BenchResult()
    result.context = {"impl": impl, "device": info.name, "preset": shapes["preset"], "batch": shapes["batch"]}
    progress(f"P7.1 vs diffusers, {shapes['oracle_preset']} fp32 on {device}")
    guarded("P7.1", result, ("p7_1_rel_err",), oracle_parity, impl, shapes, device, result)
    guarded("P7.2", result, ("p7_2_ulysses_rel_err", "p7_2_ring_rel_err"), sp_parity, impl, shapes, result)
    if device == "cpu":
        for m in ("p7_3_step_speedup", "p7_3_attn_mlp_of_peak"):
            result.skip(m, "the compute-bound step is timed against the bf16 matmul peak of a CUDA GPU")
    guarded("P7.3", result, ("p7_3_step_speedup", "p7_3_attn_mlp_of_peak"), step_timings, impl, shapes, device,
            result)
    if gpus >= 2 and impl != "framework":
        guarded("P7.4", result, ("p7_4_ulysses_speedup",), ulysses_two_gpus, impl, shapes, result)
    else:
        result.skip("p7_4_ulysses_speedup", f"needs 2 CUDA GPUs with NCCL ({GPU_KIND_2}); this machine has {gpus}")
    result.tables["Ulysses vs ring: phase 6's α-β model (assumed link figures)"] = crossover_table(
        PRESETS[shapes["preset"]], shapes["batch"])
    return result

