"""GPU diagnostic for E.2: where INT4 under continuous batching loses to bf16 (random:tinyllama, SIZE=full).

    PYTHONPATH=$PWD python3 -m shared.scripts.gpu_e2 [--kernels-only]

1. The projections alone, three of TinyLlama's shapes at M rows (the rows of a batched step): bf16 ``F.linear``,
   ``w4a16_linear`` as routed, its Triton GEMM forced, and ``dequantize_rows`` + ``F.linear`` (each call in one CUDA graph, weights
   rotated past the L2), µs per call.
2. The two engines as ``make check-engine`` builds them: 16 streams of 128 tokens (E.2b's setting) — host
   seconds per step (plan + launch + read back) beside wall seconds per step, GPU busy and kernels per step —
   and the offline mixed workload (E.2a's) under the profiler: GPU busy and the top kernels.
"""

from __future__ import annotations

import sys
import time

import torch

SHAPES = [(2048, 2560, "qkv"), (2048, 11264, "gate_up"), (5632, 2048, "down")]
ROWS = (16, 64, 128, 256, 1024)


def kernel_sweep() -> None:
    from phase5_quantization.bench_speed import _random_int4, graphed_seconds
    from phase5_quantization.kernels import to_kernel_layout, w4a16_linear
    from phase5_quantization.kernels.dequant import dequantize_rows

    F = torch.nn.functional
    print("| shape | M | bf16 F.linear µs | W4A16 as routed µs | Triton W4A16 GEMM µs | dequant µs | "
          "dequant + F.linear µs |", flush=True)
    for k, n, name in SHAPES:
        copies = 4
        kws = [to_kernel_layout(_random_int4(n, k, s), "cuda") for s in range(copies)]
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        scratch = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = graphed_seconds([lambda w=w, x=x: F.linear(x, w) for w in dense], calls=8)
            t_int4 = graphed_seconds([lambda w=w, x=x: w4a16_linear(x, w) for w in kws], calls=8)
            t_gemm = graphed_seconds([lambda w=w, x=x: w4a16_linear(x, w, config={"KERNEL": "gemm"}) for w in kws],
                                     calls=8) if m > 64 else float("nan")
            t_deq = graphed_seconds([lambda w=w, s=scratch: dequantize_rows(w, torch.bfloat16, s) for w in kws],
                                    calls=8)
            t_both = graphed_seconds([lambda w=w, x=x, s=scratch: F.linear(x, dequantize_rows(w, torch.bfloat16, s))
                                      for w in kws], calls=8)
            print(f"| {name} {k}->{n} | {m} | {t_bf16 * 1e6:.1f} | {t_int4 * 1e6:.1f} | {t_gemm * 1e6:.1f} | {t_deq * 1e6:.1f} | "
                  f"{t_both * 1e6:.1f} |", flush=True)


def step_breakdown(label: str, engine, prompts, max_tokens) -> None:
    from module0_profiling.trace import profile_region

    batched = engine.batched
    host, walls = [], []

    def run():
        t = [time.perf_counter()]

        def on_step(e):
            host.append(e.last_step.seconds)
            now = time.perf_counter()
            walls.append(now - t[0])
            t[0] = now

        reqs = [batched.make_request(p, n, ignore_eos=True) for p, n in zip(prompts, max_tokens, strict=True)]
        batched.generate(reqs, on_step=on_step)

    run()
    host.clear()
    walls.clear()
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    steps = len(walls)
    walls_sorted = sorted(walls)
    print(f"{label}: {steps} steps in {wall * 1e3:.1f} ms; per step wall p50 {walls_sorted[steps // 2] * 1e3:.3f} ms, "
          f"host p50 {sorted(host)[steps // 2] * 1e3:.3f} ms, host mean {sum(host) / steps * 1e3:.3f} ms", flush=True)
    t = profile_region(run, iters=1, warmup=0)
    print(f"{label}: GPU busy {100 * (t.gpu_busy or 0):.0f} %, {t.launches / steps:.1f} kernels per step, "
          f"mean gap {1e6 * (t.mean_gap_s or 0):.1f} us", flush=True)
    for k in t.top(10):
        print(f"   {k.calls:6d} calls {1e6 * k.mean_s:8.1f} us  {100 * k.share:4.1f} %  {k.name[:100]}", flush=True)


def engines() -> None:
    from shared.bench import Context

    ctx = Context("full")
    streams, new = ctx.s["streams"], ctx.s["new"]
    for quant in (None, "rtn"):
        engine = ctx.engine("solution", quant)
        engine.warmup()
        label = "INT4" if quant else "bf16"
        step_breakdown(f"{label} {streams} streams", engine, ctx.prompts[:streams], [new] * streams)
        step_breakdown(f"{label} offline ({len(ctx.trace_prompts)} requests)", engine, ctx.trace_prompts, ctx.trace_lengths)
        del engine
        torch.cuda.empty_cache()


if __name__ == "__main__":
    kernel_sweep()
    if "--kernels-only" not in sys.argv[1:]:
        engines()
