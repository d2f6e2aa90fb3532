"""Markdown tables of the phase-2 bench: correctness grid, token sweep, launch sweep, kernel attributes."""

from __future__ import annotations

import torch

from module0_profiling.timing import time_fn


def _md(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def correctness_table(rows: list) -> str:
    """Worst error / tolerance per (impl, dtype, head_dim), over token counts and layouts."""
    worst: dict[tuple, tuple] = {}
    for impl, dtype, head_dim, tokens, layout, ratio, note in rows:
        key = (impl, dtype, head_dim)
        if key not in worst or ratio > worst[key][0]:
            worst[key] = (ratio, tokens, layout, note)
    body = [[impl, dt, hd, f"{r:.3g}", f"{tok} tokens, {lay}", note or ("PASS" if r <= 1 else "FAIL")]
            for (impl, dt, hd), (r, tok, lay, note) in sorted(worst.items())]
    return _md(["impl", "dtype", "head_dim", "max err / tol", "worst case", "status"], body)


def token_sweep_table(lines: list[tuple[int, dict]], impl: str) -> str:
    names = [n for n in ("impl", "framework", "v2 shared", "eager", "torch.compile", "liger", "flashinfer",
                         "flashinfer in-place") if n in lines[0][1]]
    header = ["tokens", "MB counted"] + [impl if n == "impl" else n for n in names] + [f"{impl} time"]
    body = []
    for tokens, t in lines:
        nbytes = t["bytes"]
        cells = [f"{nbytes / t[n] / 1e9:.0f}" for n in names]
        body.append([tokens, f"{nbytes / 1e6:.2f}", *cells, f"{t['impl'] * 1e6:.1f} µs"])
    note = ("\n\nGB/s = counted bytes / median time. Below ~1 MB a call is launch- and latency-bound "
            "(a few µs whatever the kernel), so GB/s there measures overhead, not bandwidth.")
    return _md(header, body) + note


def launch_sweep_table(module, shape, l2_bytes: float) -> str:
    """The solution kernel under several thread layouts (llm.c's block-size sweep)."""
    from phase2_rope_cuda.workload import counted_bytes, input_sets

    sets = input_sets(shape, "cuda", l2_bytes)
    nbytes = counted_bytes(shape, sum(x.distinct_positions for x in sets) / len(sets))
    body = []
    for heads in (1, 2, 4):
        for min_threads in (128, 256, 512):
            config = module.LaunchConfig(heads_per_thread=heads, min_threads_per_block=min_threads)
            grid, block = module.launch_shape(shape.tokens, shape.q_heads + shape.kv_heads, shape.head_dim, shape.dtype, config)
            t = time_fn(lambda x, c=config: module.apply_rope_(*x.args, config=c), inputs=sets, warmup=5, iters=25,
                        device="cuda", calls_per_sample=4)
            mark = " (default)" if config == module.DEFAULT_CONFIG else ""
            body.append([f"{heads}{mark}", min_threads, f"{block[0]}×{block[1]}", grid[0], f"{t.median * 1e6:.1f}", f"{nbytes / t.median / 1e9:.0f}"])
    return _md(["heads/thread", "min threads", "block (x×y)", "blocks", "µs", "GB/s"], body)


def kernel_attribute_table() -> str:
    """Registers and local memory per thread as the driver reports them for the compiled kernels."""
    from phase2_rope_cuda.cuda_launch import (
        NAIVE_FILE,
        SHARED_FILE,
        VECTORIZED_FILE,
        get_kernel,
        kernel_attributes,
    )

    body = []
    device = torch.device("cuda", torch.cuda.current_device())
    for file_name, name in ((NAIVE_FILE, "rope_v1_bf16_pos64"), (SHARED_FILE, "rope_v2_bf16_pos64"),
                            (VECTORIZED_FILE, "rope_v3_bf16_hd64_pos64"), (VECTORIZED_FILE, "rope_v3_bf16_hd128_pos64"),
                            (VECTORIZED_FILE, "rope_v3_f32_hd64_pos64")):
        try:
            attrs = kernel_attributes(get_kernel(file_name, name, device))
        except Exception as e:
            body.append([name, f"unavailable: {type(e).__name__}", "", "", ""])
            continue
        body.append([name, attrs.get("num_regs"), attrs.get("local_size_bytes"), attrs.get("shared_size_bytes"),
                     attrs.get("max_threads_per_block")])
    return _md(["kernel", "registers/thread", "local bytes", "static smem", "max threads/block"], body)


def host_overhead_table(versions: dict, inputs, calls: int = 300) -> str:
    """CPU time per call at 1 token (the GPU work is ~nothing): what a call costs before any kernel runs."""
    import time

    body = []
    for name, fn in versions.items():
        for _ in range(10):
            fn(inputs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(inputs)
        host = (time.perf_counter() - t0) / calls
        torch.cuda.synchronize()
        body.append([name, f"{host * 1e6:.1f}"])
    note = ("\n\nA call whose CPU cost exceeds its GPU time leaves the GPU idle between calls: the Python path "
            "must stay well below the kernel's time at 16384 tokens (the main-shape table above).")
    return _md(["version", "CPU µs per call"], body) + note
