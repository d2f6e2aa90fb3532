"""Manual sweep of decode and prefill launch parameters at the target shapes (GPU): prints one line per config.

Used to choose the autotuner's config lists and the split heuristic; ``python -m phase3_paged_attention.scripts.tune``.
"""

from __future__ import annotations

import sys
import time

import torch

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.timing import time_fn
from phase3_paged_attention.bench import decode_bytes, sdpa_flash_prefill, time_dense, time_graphed
from phase3_paged_attention.kernels.decode_flash import flash_paged_decode
from phase3_paged_attention.kernels.prefill_flash import flash_varlen_prefill
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

HEADS = dict(num_q_heads=32, num_kv_heads=4, head_dim=64)


def decode_sweep(batch: int, context: int, block: int, copy_gbps: float, splits_list, configs, seeds=4) -> None:
    """Device time (CUDA-graph replay, rotating over ``seeds`` block-table layouts) of each launch choice."""
    sets = [decode_inputs([context] * batch, block_size=block, dtype=torch.bfloat16, device="cuda", seed=s,
                          spare_blocks=0, **HEADS) for s in range(seeds)]
    nbytes = decode_bytes(batch, context, HEADS)
    outs = [torch.empty_like(d.q) for d in sets]
    print(f"== decode batch {batch} context {context} block {block}: dense SDPA (graph) "
          f"{nbytes / time_dense(sets, graphed=True) / 1e9:.0f} GB/s", flush=True)
    best = (0, None)
    for splits in splits_list:
        for bn, w, s, heads_first in configs:
            fns = [lambda d=d, o=o, splits=splits, bn=bn, w=w, s=s, hf=heads_first: flash_paged_decode(
                *d.args(), 0.125, context, o, num_splits=splits, block_n=bn, num_warps=w, num_stages=s, heads_first=hf)
                for d, o in zip(sets, outs, strict=True)]
            try:
                t = time_graphed(fns, iters=40)
            except Exception as e:  # out of shared memory etc.
                print(f"splits {splits} {bn}/{w}/{s}/{heads_first}: {type(e).__name__}", flush=True)
                continue
            gbps = nbytes / t / 1e9
            best = max(best, (gbps, (splits, bn, w, s, heads_first)))
            print(f"splits {splits:3d} BLOCK_N {bn:3d} warps {w} stages {s} heads_first {heads_first:d}: "
                  f"{t * 1e6:8.1f} µs {gbps:6.0f} GB/s {100 * gbps / copy_gbps:5.1f} %", flush=True)
    print(f"best {best}", flush=True)


def prefill_sweep(configs) -> None:
    p = prefill_inputs([2048] * 8, block_size=16, dtype=torch.bfloat16, device="cuda", seed=0, **HEADS)
    flops = 4 * 8 * 32 * 64 * 2048 * 2048 / 2
    t_sdpa, how = sdpa_flash_prefill(8, 2048, HEADS, torch.bfloat16)
    print(f"== prefill 8×2048: SDPA ({how}) {flops / t_sdpa / 1e12:.0f} TFLOP/s", flush=True)
    out = torch.empty_like(p.q)
    for bm, bn, w, s in configs:
        fn = lambda bm=bm, bn=bn, w=w, s=s: flash_varlen_prefill(p.q, p.k, p.v, p.cu_seqlens, 2048, 0.125, True, p.k_cache, p.v_cache,  # noqa: E731
                                          p.slot_mapping, out, block_m=bm, block_n=bn, num_warps=w, num_stages=s)
        try:
            t = time_fn(fn, warmup=3, iters=20).median
        except Exception as e:
            print(f"BLOCK_M {bm} BLOCK_N {bn} warps {w} stages {s}: {type(e).__name__}", flush=True)
            continue
        print(f"BLOCK_M {bm:3d} BLOCK_N {bn:3d} warps {w} stages {s}: {flops / t / 1e12:6.0f} TFLOP/s "
              f"{100 * t_sdpa / t:5.1f} % of SDPA", flush=True)


def main() -> None:
    t0 = time.time()
    device = detect_device()
    copy_gbps = measured_peaks(device).copy_gbps
    print(f"{device.name}: copy {copy_gbps:.0f} GB/s, {device.sm_count} SMs", flush=True)
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("all", "decode"):
        configs = [(bn, w, s, h) for bn, w, s in ((128, 4, 3), (256, 8, 2), (128, 4, 4), (256, 4, 3), (64, 4, 3))
                   for h in (False, True)]
        decode_sweep(64, 4096, 16, copy_gbps, [1, 2], configs)
        decode_sweep(64, 4096, 64, copy_gbps, [1], [(128, 4, 3, False), (256, 8, 2, False)])
    if what in ("all", "prefill"):
        prefill_sweep([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 4), (64, 64, 4, 3),
                       (128, 32, 4, 3), (128, 128, 4, 3), (64, 32, 4, 4), (128, 64, 8, 4), (128, 64, 4, 2)])
    print(f"tune done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
