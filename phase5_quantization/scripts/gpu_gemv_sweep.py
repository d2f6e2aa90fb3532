"""GPU: every W4A16 GEMV configuration (M = 1) on TinyLlama's four projections, plain and fused as the decode
step calls them, beside bf16 ``F.linear`` and tinygemm — to see how far the autotuner's space is from the
bandwidth roof and which tile shapes a better space (or layout) should hold.

    python -m phase5_quantization.scripts.gpu_gemv_sweep [--quick] [--out sweep.json]

Timing as ``bench_speed``: ``CALLS`` calls captured in one CUDA graph, rotating among enough weight copies that
every call reads HBM, per call = replay / ``CALLS``. Each configuration's output is checked against the
dequantized matrix first (a wrong configuration is reported, not timed). One line of JSON per measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

T0 = time.time()
SHAPES = {  # name: (K, N, fusion) as the decode step calls them
    "qkv (norm)": (2048, 2560, "norm"),
    "o (residual)": (2048, 2048, "residual"),
    "gate_up (norm + swiglu)": (2048, 11264, "swiglu"),
    "down (residual)": (5632, 2048, "residual"),
}


def emit(**kw) -> None:
    kw["t"] = round(time.time() - T0, 1)
    print(json.dumps(kw), flush=True)


def configs(quick: bool):
    ns = (16, 32) if quick else (16, 32, 64)
    kws = (128, 256) if quick else (64, 128, 256, 512)
    splits = (1, 2, 4) if quick else (1, 2, 4, 8)
    warps = (4, 8) if quick else (2, 4, 8)
    for bn, bkw, sk, w in itertools.product(ns, kws, splits, warps):
        if bn * bkw // (32 * w) > 64:  # words per thread: beyond this the tile spills
            continue
        yield dict(BLOCK_N=bn, BLOCK_KW=bkw, SPLIT_K=sk, num_warps=w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller configuration space")
    ap.add_argument("--out", default=None, help="also write every measurement to this JSON file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this sweep times CUDA graphs: it needs a CUDA GPU")
    F = torch.nn.functional
    from phase5_quantization.bench_speed import _copies, _random_int4, graphed_seconds
    from phase5_quantization.kernels import to_kernel_layout, w4a16_linear
    from phase5_quantization.peers import int4pack_linear, int4pack_reason

    copy_gbps = None
    try:
        from module0_profiling.hardware import detect_device, measured_peaks

        copy_gbps = measured_peaks(detect_device()).copy_gbps
    except Exception as e:  # noqa: BLE001 - the sweep is still useful without the roof
        emit(what="no measured peaks", error=str(e)[:200])
    rows = []
    for name, (k, n, fusion) in SHAPES.items():
        int4_bytes = n * k / 2 + 3 * n * k / 128
        qws = [_random_int4(n, k, seed) for seed in range(_copies(int4_bytes))]
        kws = [to_kernel_layout(q) for q in qws]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        g = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
        res = torch.randn(1, n, device="cuda", dtype=torch.bfloat16)
        kw = dict(norm=dict(norm_weight=g, eps=1e-5), swiglu=dict(norm_weight=g, eps=1e-5, swiglu=True),
                  residual=dict(residual=res))[fusion]
        ref = w4a16_linear(x, kws[0], **kw).float()  # the tuned kernel: every configuration must agree with it
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(_copies(2 * n * k))]
        base = dict(shape=name, K=k, N=n, fusion=fusion, int4_mb=round(int4_bytes / 1e6, 2))
        t_lin = graphed_seconds([lambda w=w, x=x: F.linear(x, w) for w in dense])
        emit(**base, version="bf16 F.linear (plain)", us=round(t_lin * 1e6, 2))
        t_tuned = graphed_seconds([lambda w=w, x=x, kw=kw: w4a16_linear(x, w, **kw) for w in kws])
        emit(**base, version="W4A16 autotuned", us=round(t_tuned * 1e6, 2),
             gbps=round(int4_bytes / t_tuned / 1e9), roof_pct=round(100 * int4_bytes / t_tuned / 1e9 / copy_gbps, 1)
             if copy_gbps else None)
        if int4pack_reason() is None:
            try:
                peers = [int4pack_linear(q) for q in qws]
                t_peer = graphed_seconds([lambda p=p, x=x: p(x) for p in peers])
                emit(**base, version="tinygemm (plain)", us=round(t_peer * 1e6, 2))
            except Exception as e:  # noqa: BLE001
                emit(**base, version="tinygemm", error=str(e)[:200])
        best = None
        for c in configs(args.quick):
            try:
                got = w4a16_linear(x, kws[0], config=c, **kw).float()
                err = float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-6))
                if err > 2e-2:
                    emit(**base, version="W4A16", config=c, error=f"wrong result: rel. err {err:.1e}")
                    continue
                t = graphed_seconds([lambda w=w, x=x, c=c, kw=kw: w4a16_linear(x, w, config=c, **kw)
                                     for w in kws])
            except Exception as e:  # noqa: BLE001 - out of resources, a split the workspace cannot hold ...
                emit(**base, version="W4A16", config=c, error=f"{type(e).__name__}: {str(e)[:150]}")
                continue
            row = dict(**base, version="W4A16", config=c, us=round(t * 1e6, 2), gbps=round(int4_bytes / t / 1e9))
            rows.append(row)
            emit(**row)
            if best is None or t < best[0]:
                best = (t, c)
        if best:
            emit(**base, version="best configuration", config=best[1], us=round(best[0] * 1e6, 2),
                 vs_tuned=round(t_tuned / best[0], 2), vs_linear=round(t_lin / best[0], 2))
        del qws, kws, dense
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
