"""GPU: the W4A16 kernels' configurations on TinyLlama's projections, to pick the fixed ones the launcher
uses.

At M = 1 the row GEMV's configurations, fused as the decode step calls them (and plain, as P5.2 measures
them), beside bf16 ``F.linear``, tinygemm and the ``[K/8, N]`` GEMV of the ``col`` layout; at M = 16 the
small-batch kernels (``w4a16_rows_mma``, and on Hopper the Gluon ``w4a16_wgmma`` at 1–4 groups per program).
At the end the best configuration per shape, ready to paste into ``configs.ROW_GEMV_TABLE``, and with
``--write-table`` both tables in ``kernels/tuned/<this GPU>.json`` (merged; a copy beside ``--out``).

    PYTHONPATH=$PWD python -m phase5_quantization.scripts.gpu_gemv_sweep [--quick] [--shapes qkv,down]
        [--no-m16] [--no-col] [--write-table] [--out sweep.json]

``--quick``: the earlier winners and the candidates whose whole grid is resident in one wave (from sm_90's
register counts), split-K 2 for the long-K down projection, a dozen small-batch configurations per shape, no
``[K/8, N]`` baselines. The full space: BLOCK_N 1–8 × BLOCK_KW 64–512 × 1–8 warps (at least 2 and at most 32
words per thread along K, 16 with SwiGLU; no slab wider than the row). Timing as ``bench_speed`` (one CUDA
graph, weight copies rotated so every call reads HBM); each configuration is first checked against the
dequantized matrix (a wrong one is reported, not timed). One JSON line per measurement, a summary at the end.
Past sweeps: ``phase5_quantization/NOTES.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

T0 = time.time()
DEVICE = "cuda"
SHAPES = {  # name: (K, N, fusion) as the decode step calls them (N: the gate half with SwiGLU), + P5.2's plain one
    "qkv": (2048, 2560, "norm"),
    "o": (2048, 2048, "residual"),
    "gate_up": (2048, 5632, "swiglu"),
    "down": (5632, 2048, "residual"),
    "gate_or_up_plain": (2048, 5632, "none"),
}
M16_SHAPES = {"gate_or_up_plain": (2048, 5632), "down": (5632, 2048)}  # P5.2's M = 16 shapes (plain)


def emit(**kw) -> None:
    kw["t"] = round(time.time() - T0, 1)
    print(json.dumps(kw), flush=True)


def row_configs(quick: bool, k: int, swiglu: bool):
    """The row GEMV's space (module docstring); ``maxnreg``: a register cap (more programs resident per
    SM)."""
    if quick:
        space = [(bn, bkw, w, 1, 0) for bn in (2, 4) for bkw, w in ((256, 2), (256, 4), (512, 4))]
        space += [(4, 128, 1, 1, 0), (8, 128, 1, 1, 0), (8, 256, 2, 1,
                                                         0), (8, 512, 4, 1, 0), (4, 256, 2, 1, 96),
                  (8, 256, 2, 1, 128), (2, 256, 2, 1, 80)]
        if k > 4096:  # the down projection: 704 words per row, split in two
            space += [(4, 256, 2, 2, 0), (4, 128, 1, 2, 0), (8, 256, 2, 2, 0)]
    else:
        space = [(bn, bkw, w, sk,
                  0) for bn, bkw, w in itertools.product((1, 2, 4, 8), (64, 128, 256, 512), (1, 2, 4, 8))
                 for sk in ((1, 2) if k > 4096 else (1,))]
        space += [(4, 256, 2, 1, 96), (8, 256, 2, 1, 128), (2, 256, 2, 1, 80)]
    cap = 16 if swiglu else 32
    for bn, bkw, w, sk, maxnreg in space:
        # ≥ 2 words per thread along K (8-byte loads), ≤ cap words per thread, no slab wider than a split's K
        if bkw // (32 * w) < 2 or bn * bkw // (32 * w) > cap or bkw * 8 * sk > k:
            continue
        c = dict(BLOCK_N=bn, BLOCK_KW=bkw, SPLIT_K=sk, num_warps=w)
        if maxnreg:
            c["maxnreg"] = maxnreg
        yield c


def mma_configs(quick: bool, n: int, k: int, sms: int):
    """The small-batch kernel's space at 16 rows: (BLOCK_N, warps, resident programs per SM at sm_90's
    register counts) × split-K for one resident wave (and half of it) × DEPTH × ONE_DOT, a register cap for 4
    per SM; the full space adds 2–6 groups per program × DEPTH × a 128 or 96 register cap around the quick
    winner."""
    from phase5_quantization.kernels.configs import mma_config

    groups = k // 128
    out = [mma_config(n, k, 16, False)]
    shapes = [(64, 4, 3, 0), (64, 4, 4, 128), (128, 8, 1, 0), (32, 2, 4,
                                                               0)] + ([] if quick else [(128, 8, 2, 128),
                                                                                              (16, 1, 8, 0)])
    for bn, w, per_sm, maxnreg in shapes:
        tiles = -(-n // bn)
        for frac in (1.0, 0.5):
            split = max(1, min(groups // 2, round(frac * per_sm * sms / tiles)))
            split = -(-groups // -(-groups // split))
            for depth, one_dot in ((1, 1), (2, 1), (1,
                                                    0)) if not quick or (bn == 64 and frac == 1.0) else ((1, 1),):
                c = dict(BLOCK_N=bn, SPLIT_K=split, num_warps=w, DEPTH=depth, ONE_DOT=one_dot)
                if maxnreg:
                    c["maxnreg"] = maxnreg
                if c not in out:
                    out.append(c)
    if not quick:  # around the quick winner (64 rows, 4 warps, nibble MMAs): 2–6 groups per program, cap, depth
        for split in sorted({-(-groups // g) for g in (2, 3, 4, 5, 6)}):
            for depth in (1, 2):
                for maxnreg in (128, 96):
                    c = dict(BLOCK_N=64, SPLIT_K=split, num_warps=4, DEPTH=depth, ONE_DOT=0, maxnreg=maxnreg)
                    if c not in out:
                        out.append(c)
    return out


def reference(x, deq, fusion, g, res):
    """The fused product in fp32 from the dequantized matrix (roundings aside)."""
    h = x.float()
    if fusion in ("norm", "swiglu"):
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * g.float()
    y = h @ deq.t()
    if fusion == "swiglu":
        gate, up = y.chunk(2, -1)
        y = torch.nn.functional.silu(gate) * up
    if fusion == "residual":
        y = y + res.float()
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller configuration space (~1 minute)")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help=f"comma-separated subset of {','.join(SHAPES)}")
    ap.add_argument("--no-m16", action="store_true", help="skip the M = 16 GEMM timings")
    ap.add_argument("--no-col", action="store_true",
                    help="skip the original [K/8, N] GEMV (autotuned) baseline")
    ap.add_argument("--col", action="store_true", help="with --quick: still time the [K/8, N] baselines")
    ap.add_argument("--out", default=None, help="also write every measurement to this JSON file")
    ap.add_argument("--write-table", action="store_true",
                    help="write the best configuration per shape to kernels/tuned/<this GPU>.json (row_gemv_config reads it)")
    args = ap.parse_args()
    if args.quick and not args.col:
        args.no_col = True  # the [K/8, N] kernels autotune (tens of seconds): not in the quick run
    if not torch.cuda.is_available():
        raise SystemExit("this sweep times CUDA graphs: it needs a CUDA GPU")
    shapes = [name for name in args.shapes.split(",") if name]  # --shapes "": M = 16 only
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        raise SystemExit(f"unknown shape(s) {sorted(unknown)}: choose among {', '.join(SHAPES)}")
    F = torch.nn.functional
    from phase5_quantization.bench_speed import _copies, _random_int4, graphed_seconds
    from phase5_quantization.kernels import row_gemv_config, to_kernel_layout, w4a16_linear
    from phase5_quantization.kernels.configs import MMA_KEYS
    from phase5_quantization.kernels.launch import wgmma_reason
    from phase5_quantization.peers import int4pack_linear, int4pack_reason

    copy_gbps = None
    try:
        from module0_profiling.hardware import detect_device, measured_peaks

        copy_gbps = measured_peaks(detect_device()).copy_gbps
        emit(what="copy bandwidth", gbps=round(copy_gbps))
    except Exception as e:  # noqa: BLE001 - the sweep is still useful without the roof
        emit(what="no measured peaks", error=str(e)[:200])
    rows, summary, table, mma_table = [], [], {}, {}
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name in shapes:
        k, n, fusion = SHAPES[name]
        swiglu = fusion == "swiglu"
        rows_w = 2 * n if swiglu else n  # matrix rows
        int4_bytes = rows_w * k / 2 + 3 * rows_w * k / 128
        qws = [_random_int4(rows_w, k, seed) for seed in range(_copies(int4_bytes))]
        row_w = [to_kernel_layout(q, layout="row") for q in qws]
        col_w = [] if args.no_col else [to_kernel_layout(q, layout="col") for q in qws]
        deq = qws[0].dequantize(torch.float32)
        x = torch.randn(1, k, device=DEVICE, dtype=torch.bfloat16)
        g = torch.rand(k, device=DEVICE, dtype=torch.bfloat16) + 0.5
        res = torch.randn(1, n, device=DEVICE, dtype=torch.bfloat16)
        kw = dict(norm=dict(norm_weight=g, eps=1e-5), swiglu=dict(norm_weight=g, eps=1e-5, swiglu=True),
                  residual=dict(residual=res), none={})[fusion]
        ref = reference(x, deq, fusion, g, res)
        base = dict(shape=name, K=k, N=n, fusion=fusion, int4_mb=round(int4_bytes / 1e6, 2))

        def perf(t, int4_bytes=int4_bytes):
            return dict(us=round(t * 1e6, 2), gbps=round(int4_bytes / t / 1e9),
                        copy_pct=round(100 * int4_bytes / t / 1e9 / copy_gbps, 1) if copy_gbps else None)

        dense = [torch.randn(rows_w, k, device=DEVICE, dtype=torch.bfloat16) * 0.02
                 for _ in range(_copies(2 * rows_w * k))]
        t_lin = graphed_seconds([lambda w=w, x=x: F.linear(x, w) for w in dense])
        emit(**base, version="bf16 F.linear (plain)", us=round(t_lin * 1e6, 2))
        del dense
        t_peer = None
        if int4pack_reason() is None:
            try:
                peers = [int4pack_linear(q) for q in qws]
                t_peer = graphed_seconds([lambda p=p, x=x: p(x) for p in peers])
                emit(**base, version="tinygemm (plain)", us=round(t_peer * 1e6, 2))
                del peers
            except Exception as e:  # noqa: BLE001
                emit(**base, version="tinygemm", error=str(e)[:200])
        t_col = None
        if not args.no_col:
            # autotuned in capture_cuda_graph's warm-up
            t_col = graphed_seconds([lambda w=w, x=x, kw=kw: w4a16_linear(x, w, **kw) for w in col_w])
            emit(**base, version="[K/8, N] GEMV autotuned (col)", **perf(t_col))
        default = row_gemv_config(n, k, 1, swiglu, fusion in ("norm", "swiglu"))
        best = None
        for c in [default] + [c for c in row_configs(args.quick, k, swiglu) if c != default]:
            try:
                got = w4a16_linear(x, row_w[0], config=c, **kw).float()
                err = float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-6))
                if err > 2e-2:
                    emit(**base, version="row GEMV", config=c, error=f"wrong result: rel. err {err:.1e}")
                    continue
                t = graphed_seconds([lambda w=w, x=x, c=c, kw=kw: w4a16_linear(x, w, config=c, **kw) for w in row_w])
            except Exception as e:  # noqa: BLE001 - out of resources, a split the workspace cannot hold ...
                emit(**base, version="row GEMV", config=c, error=f"{type(e).__name__}: {str(e)[:150]}")
                continue
            row = dict(**base, version="row GEMV" + (" (default)" if c is default else ""), config=c,
                       **perf(t), vs_linear=round(t_lin / t, 2),
                       vs_tinygemm=round(t_peer / t, 2) if t_peer else None, rel_err=float(f"{err:.1e}"))
            rows.append(row)
            emit(**row)
            if best is None or t < best[0]:
                best = (t, c)
        if best:
            t, c = best
            table[(n, k, swiglu)] = (c["BLOCK_N"], c["BLOCK_KW"], c["SPLIT_K"], c["num_warps"],
                                     c.get("maxnreg", 0))
            summary.append((name, int4_bytes, t_lin, t_peer, t_col, t, c))
        del qws, row_w, col_w
        torch.cuda.empty_cache()

    m16 = []
    for name, (k, n) in ({} if args.no_m16 else M16_SHAPES).items():
        int4_bytes = n * k / 2 + 3 * n * k / 128
        qws = [_random_int4(n, k, seed) for seed in range(_copies(int4_bytes))]
        x = torch.randn(16, k, device=DEVICE, dtype=torch.bfloat16)
        ref = x.float() @ qws[0].dequantize(torch.float32).t()
        dense = [torch.randn(n, k, device=DEVICE,
                             dtype=torch.bfloat16) * 0.02 for _ in range(_copies(2 * n * k))]
        t_lin = graphed_seconds([lambda w=w, x=x: F.linear(x, w) for w in dense])
        del dense
        line = dict(shape=name, K=k, N=n, M=16, linear_us=round(t_lin * 1e6, 2))
        if int4pack_reason() is None:
            try:
                peers = [int4pack_linear(q) for q in qws]
                line["tinygemm_us"] = round(graphed_seconds([lambda p=p, x=x: p(x) for p in peers]) * 1e6, 2)
                del peers
            except Exception as e:  # noqa: BLE001
                line["tinygemm_error"] = str(e)[:200]
        ws = [to_kernel_layout(q, layout="row") for q in qws]
        if not args.quick:  # the tensor-core GEMM over the row layout (autotuned: tens of seconds), the old M = 16 path
            t = graphed_seconds([lambda w=w, x=x: w4a16_linear(x, w, config={"KERNEL": "gemm"}) for w in ws])
            line["gemm_row_us"] = round(t * 1e6, 2)
        best = None
        for c in mma_configs(args.quick, n, k, sms):
            cfg = dict(c, KERNEL="mma")
            try:
                err = float((w4a16_linear(x, ws[0], config=cfg).float() - ref).abs().max() / ref.abs().max())
                if err > 2e-2:
                    emit(shape=name, M=16, version="small-batch MMA", config=c,
                         error=f"wrong result: rel. err {err:.1e}")
                    continue
                t = graphed_seconds([lambda w=w, x=x, cfg=cfg: w4a16_linear(x, w, config=cfg) for w in ws])
            except Exception as e:  # noqa: BLE001 - out of resources ...
                emit(shape=name, M=16, version="small-batch MMA", config=c,
                     error=f"{type(e).__name__}: {str(e)[:150]}")
                continue
            r = dict(shape=name, K=k, N=n, M=16,
                     version="small-batch MMA" + (" (launcher's current)" if best is None else ""), config=c,
                     us=round(t * 1e6, 2), vs_linear=round(t_lin / t, 2),
                     vs_tinygemm=round(line["tinygemm_us"] / (t * 1e6), 2) if "tinygemm_us" in line else None,
                     rel_err=float(f"{err:.1e}"))
            rows.append(r)
            emit(**r)
            if best is None or t < best[0]:
                best = (t, c, err)
        if best:
            t, c, err = best
            line.update(mma_us=round(t * 1e6, 2), mma_vs_linear=round(t_lin / t, 2), mma_config=c,
                        mma_rel_err=float(f"{err:.1e}"))
            if "tinygemm_us" in line:
                line["mma_vs_tinygemm"] = round(line["tinygemm_us"] / (t * 1e6), 2)
            mma_table[(n, k, False, 16)] = tuple(c.get(key, 0) for key in MMA_KEYS)
        why = wgmma_reason(x, ws[0], False, False)
        for c in ([] if why else [dict(BLOCK_N=bn,
                                       GPP=g) for bn, g in ((128, 1), (128, 2), (128, 3), (128, 4),
                                                            (64, 2))]):
            # the Gluon kernel (default on Hopper): configs.wgmma_config's space
            cfg = dict(c, KERNEL="wgmma")
            err = float((w4a16_linear(x, ws[0], config=cfg).float() - ref).abs().max() / ref.abs().max())
            t = graphed_seconds([lambda w=w, x=x, cfg=cfg: w4a16_linear(x, w, config=cfg) for w in ws])
            r = dict(shape=name, K=k, N=n, M=16, version="Gluon wgmma", config=c, us=round(t * 1e6, 2),
                     vs_linear=round(t_lin / t, 2), rel_err=float(f"{err:.1e}"))
            rows.append(r)
            emit(**r)
            if err > 2e-2:
                emit(shape=name, M=16, version="Gluon wgmma", config=c,
                     error=f"wrong result: rel. err {err:.1e}")
            elif "wgmma_us" not in line or t * 1e6 < line["wgmma_us"]:
                line.update(wgmma_us=round(t * 1e6, 2), wgmma_vs_linear=round(t_lin / t, 2), wgmma_config=c)
        if why:
            emit(shape=name, M=16, version="Gluon wgmma", skipped=why)
        if not args.no_col:
            wc = [to_kernel_layout(q, layout="col") for q in qws]
            t = graphed_seconds([lambda w=w, x=x: w4a16_linear(x, w) for w in wc])  # the autotuned GEMM
            line["gemm_col_us"], line["gemm_col_vs_linear"] = round(t * 1e6, 2), round(t_lin / t, 2)
            del wc
        del ws
        emit(**line)
        m16.append(line)
        del qws
        torch.cuda.empty_cache()

    print("\nM = 1, per shape: bf16 F.linear | tinygemm | [K/8,N] GEMV (autotuned) | best row GEMV (µs, % copy bw)")
    for name, int4_bytes, t_lin, t_peer, t_col, t, c in summary:
        pct = f"{100 * int4_bytes / t / 1e9 / copy_gbps:.0f} %" if copy_gbps else "?"
        peer = f"{t_peer * 1e6:.1f}" if t_peer else "—"
        col = f"{t_col * 1e6:6.1f}" if t_col else "     —"
        ratio = f", {t_peer / t:.2f}× tinygemm" if t_peer else ""
        print(f"  {name:18s} {t_lin * 1e6:6.1f} | {peer:>6s} | {col} | {t * 1e6:6.1f} ({pct}) "
              f"= {t_lin / t:.2f}× F.linear{ratio}  {c}")
    print("\nM = 16 (P5.2: ≥ 1.5× F.linear and ≥ 1× tinygemm), per shape: bf16 F.linear | tinygemm | best small-batch MMA")
    for line in m16:
        if "mma_us" in line:
            peer = f"{line['tinygemm_us']:6.1f}" if "tinygemm_us" in line else "     —"
            vs_peer = f", {line['mma_vs_tinygemm']:.2f}× tinygemm" if "mma_vs_tinygemm" in line else ""
            print(f"  {line['shape']:18s} {line['linear_us']:6.1f} | {peer} | {line['mma_us']:6.1f} "
                  f"= {line['mma_vs_linear']:.2f}× F.linear{vs_peer}  {line['mma_config']}")
        print(f"  M=16 {line}")
    print("\n# paste into phase5_quantization/kernels/configs.py (measured by scripts/gpu_gemv_sweep.py):")
    print("ROW_GEMV_TABLE = {  # (n, k, swiglu) -> (BLOCK_N, BLOCK_KW, SPLIT_K, num_warps, maxnreg), batch 1")
    for key, val in table.items():
        print(f"    {key}: {val},")
    print("}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"m1": rows, "m16": m16, "table": {str(k): v for k, v in table.items()},
                       "mma_table": {str(k): v for k, v in mma_table.items()}}, f, indent=1)
    if args.write_table and (table or mma_table):
        from pathlib import Path

        from module0_profiling.hardware import detect_device
        from phase5_quantization.kernels import configs

        info = detect_device()
        configs.TUNED_DIR.mkdir(exist_ok=True)
        path = configs.TUNED_DIR / f"{info.slug}.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        merged = {tuple(r[:3]): r[3:] for r in old.get("table", [])}  # shapes not swept this time stay
        merged.update({key: list(cfg) for key, cfg in table.items()})
        merged_mma = {tuple(r[:4]): r[4:] for r in old.get("mma_table", [])}
        merged_mma.update({key: list(cfg) for key, cfg in mma_table.items()})
        text = json.dumps({
            "device": info.name, "torch": torch.__version__, "measured_by": "python -m phase5_quantization.scripts."
            "gpu_gemv_sweep" + (" --quick" if args.quick else ""), "date": time.strftime("%Y-%m-%d %H:%M"),
            "columns": ["n", "k", "swiglu", "BLOCK_N", "BLOCK_KW", "SPLIT_K", "num_warps", "maxnreg"],
            "table": [[*key, *cfg] for key, cfg in merged.items()],
            "mma_columns": ["n", "k", "swiglu", "BLOCK_M", *MMA_KEYS],
            "mma_table": [[*key, *cfg] for key, cfg in merged_mma.items()]}, indent=1) + "\n"
        path.write_text(text)
        print(f"wrote {path}")
        if args.out:  # beside the measurements, so a remote run brings it back (copy it to kernels/tuned/)
            copy = Path(args.out).with_name(f"tuned-{info.slug}.json")
            copy.write_text(text)
            print(f"wrote {copy} (copy to phase5_quantization/kernels/tuned/{info.slug}.json)")


if __name__ == "__main__":
    main()
