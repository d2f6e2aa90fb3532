"""Triton decode kernels on a GPU: correctness, per-kernel µs and % of copy bandwidth (a config sweep), and
decode tok/s of the Triton step (the solution) vs the inductor step (``dev.InductorStepEngine``), on
random:tinyllama bf16, prompt 512, 128 new tokens.

Usage (repo root, GPU):
    PYTHONPATH=$PWD python3 phase0_prototype/scripts/gpu_triton_decode.py [--no-sweep|--sweep-only]
(``--sweep-only``: a wider GEMV and attention config sweep, no end-to-end decode.)
"""

import sys
import time
import traceback

import torch

from module0_profiling.hardware import detect_device, measure_copy_gbps
from phase0_prototype import bench, hf_peer, load_impl, load_model
from phase0_prototype.config import TINYLLAMA
from phase0_prototype.dev import InductorStepEngine
from phase0_prototype.kernels.decode_attention import rope_cache_attention
from phase0_prototype.kernels.gemv import default_config, fused_gemv
from phase0_prototype.model import rms_norm, rope_cache
from phase0_prototype.weights import decode_bytes_per_token

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:5.0f}s]", *a, flush=True)


def graph_time(fn, reps=40):
    """Mean µs of one call, ``reps`` calls back to back inside one CUDA graph (no launch gaps from Python)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        a.record()
        for _ in range(5):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / (5 * reps))
    return best


copy_gbps = measure_copy_gbps(detect_device())[0]
log(f"device {torch.cuda.get_device_name()} copy BW {copy_gbps:.0f} GB/s torch {torch.__version__}")
dt = torch.bfloat16
H, FFN, V, QKV = 2048, 5632, 32000, 2560
SHAPES = {"qkv(norm)": (QKV, H, "norm"), "o(+res)": (H, H, "res"),
          "gate_up(norm,swiglu)": (2 * FFN, H, "swiglu"), "down(+res)": (H, FFN, "res"),
          "lm_head(norm)": (V, H, "norm")}
SWEEP = [(2, 1024, 4), (4, 512, 4), (4, 1024, 4), (8, 256, 4), (8, 512, 4), (8, 512, 8), (8, 1024, 8),
         (16, 256, 4), (16, 512, 8), (32, 128, 4)]
do_sweep = "--no-sweep" not in sys.argv
sweep_only = "--sweep-only" in sys.argv
if sweep_only:
    SWEEP += [(1, 2048, 4), (2, 2048, 4), (2, 2048, 8), (4, 2048, 8), (1, 1024, 4), (2, 512, 4), (4, 1024, 8),
              (1, 1024, 2), (2, 1024, 2), (16, 1024, 8)]
best_cfg = {}
for name, (rows, k, kind) in SHAPES.items():
    nbytes = rows * k * 2
    copies = max(2, -(-256 * 2**20 // nbytes))
    ws = [torch.randn(rows, k, device="cuda", dtype=dt) * 0.02 for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=dt)
    g = torch.randn(k, device="cuda", dtype=dt)
    n_out = rows // 2 if kind == "swiglu" else rows
    res = torch.randn(1, n_out, device="cuda", dtype=dt)
    kw = dict(norm_weight=g, eps=1e-5) if kind in ("norm", "swiglu") else {}
    # correctness vs fp32 torch
    w0 = ws[0]
    h = rms_norm(x, g, 1e-5).float() if kw else x.float()
    ref = h @ w0.float().T
    if kind == "swiglu":
        ref = torch.nn.functional.silu(ref[:, :n_out]) * ref[:, n_out:]
    if kind == "res":
        got = fused_gemv(x, w0, residual=res.clone()).float() - res.float()
    else:
        got = fused_gemv(x, w0, swiglu=kind == "swiglu", **kw).float()
    err = float((got - ref).abs().max() / ref.abs().max())
    default = default_config(n_out, k, 1, kind == "swiglu", kind in ("norm", "swiglu"))
    sweep = [(max(1, c[0] // 2), c[1], c[2]) if kind == "swiglu" else c for c in SWEEP] if do_sweep else []
    cfgs = [default] + [c for c in sweep if c != default]
    out = torch.empty(1, n_out, device="cuda", dtype=dt)
    results = []
    for cfg in cfgs:
        try:
            def call(i, cfg=cfg, ws=ws, copies=copies, kind=kind, kw=kw):
                if kind == "res":
                    fused_gemv(x, ws[i % copies], residual=res, out=out, config=cfg)  # noqa: B023 (run now)
                else:
                    fused_gemv(x, ws[i % copies], out=out, swiglu=kind == "swiglu", config=cfg,  # noqa: B023
                               **kw)
            us = graph_time(call)
            results.append((us, cfg))
        except Exception as e:
            log(f"  {name} {cfg}: failed {str(e)[:200]}")
    results.sort()
    cub = graph_time(lambda i, x=x, ws=ws, copies=copies: torch.nn.functional.linear(x, ws[i % copies]))
    log(f"{name} [{rows}x{k}] {nbytes / 1e6:.1f} MB rel.err {err:.1e}; cuBLAS F.linear {cub:.1f} us "
        f"({nbytes / cub / 1e3 / copy_gbps * 100:.0f} %)")
    for us, cfg in results[:4] + [r for r in results if r[1] == default]:
        gbps = nbytes / us / 1e3
        log(f"   {'default ' if cfg == default else ''}cfg {cfg}: {us:.1f} us = {gbps:.0f} GB/s = "
            f"{gbps / copy_gbps * 100:.0f} % copy BW")
    best_cfg[name] = results[0]
    ws.clear()

# attention
S, B = 640, 1
cache = torch.randn(22, 2, 1, 4, S, 64, device="cuda", dtype=dt)
cos, sin = rope_cache(TINYLLAMA, S, "cuda")
qkv = torch.randn(1, QKV, device="cuda", dtype=dt)
pos = torch.tensor([576], device="cuda")
us = graph_time(lambda i: rope_cache_attention(qkv, cache[i % 22, 0], cache[i % 22, 1], cos, sin, pos, 32),
                reps=22)
log(f"attention (rope+cache write+split+combine) ctx 577: {us:.1f} us per layer")
if sweep_only:
    for bs in (16, 32, 64):
        for nw in (1, 2, 4, 8):
            us = graph_time(lambda i, bs=bs, nw=nw: rope_cache_attention(
                qkv, cache[i % 22, 0], cache[i % 22, 1], cos, sin, pos, 32, block_s=bs, num_warps=nw),
                reps=22)
            log(f"   attention block_s {bs} warps {nw}: {us:.1f} us")
    log("done")
    sys.exit(0)

# full decode
model = load_model("random:tinyllama", dtype="bf16", device="cuda")
prompt = bench.random_prompt(512, 32000, "cuda")
bpt = decode_bytes_per_token(model.config, model.dtype, 512 + 64)
eager = load_impl("solution").build(model, max_seq_len=640, compile=False)
ref_tokens = eager.generate(prompt, 16, stop_on_eos=False).tokens
for name, engine_cls in [("triton", load_impl("solution").SolutionEngine), ("inductor", InductorStepEngine)]:
    if name == "inductor" and time.time() - T0 > 190:
        log("inductor path skipped (time)")
        continue
    try:
        t = time.time()
        e = engine_cls(model, max_seq_len=640, compile=True)
        e.warmup()
        setup = time.time() - t
        with torch.inference_mode():  # one graph step vs the eager PyTorch step
            first = e.prefill(prompt).argmax(-1)
            p = torch.tensor([512], device="cuda")
            g = e._graph_for(1)
            g.token_in.copy_(first)
            g.position_in.copy_(p)
            g.graph.replay()
            a = g.logits.float().clone()
            eager.prefill(prompt)
            b = eager.decode_step(first, p).float()
            step_err = float((a - b).abs().max() / b.abs().max())
        agree = (e.generate(prompt, 16, stop_on_eos=False).tokens == ref_tokens).float().mean().item()
        fig = bench.measure_generate(lambda k, e=e: e.generate(prompt, k, stop_on_eos=False), 128, 3)
        log(f"{name} ({e.mode}): setup {setup:.0f}s decode {fig['decode_tok_s']:.1f} tok/s "
            f"({fig['decode_s_per_token'] * 1e3:.3f} ms) "
            f"MBU {100 * bpt * fig['decode_tok_s'] / 1e9 / copy_gbps:.1f} % "
            f"e2e {fig['e2e_tok_s']:.1f} tok/s prefill+1 {fig['prefill_s'] * 1e3:.1f} ms; "
            f"first 16 greedy tokens agree with eager: {agree:.2f}; "
            f"graph-step logits vs eager step rel.err {step_err:.1e}")
        if name == "triton":
            from module0_profiling.trace import profile_region
            tr = profile_region(lambda e=e: e.generate(prompt, 32, stop_on_eos=False), iters=1, warmup=1)
            log(f"trace: {tr.launches} kernels for prefill + 31 steps, busy {tr.gpu_busy}")
            for ks in tr.kernels[:8]:
                log(f"   {ks.name[:70]:70s} calls {ks.calls:5d} mean {ks.mean_s * 1e6:6.1f} us "
                    f"share {ks.share * 100:4.1f} %")
            # P0.1-style fp32 parity with HF, Triton graph path
            if hf_peer.missing_reason() is None:
                m32 = load_model("random:tinyllama", dtype="fp32", device="cuda", seed=1)
                pr = bench.random_prompt(32, 32000, "cuda", seed=1)
                expected = hf_peer.hf_generate(hf_peer.build_hf(m32), pr, 64)[0].cpu()
                e32 = load_impl("solution").build(m32, max_seq_len=96, compile=True)
                got = e32.generate(pr, 64, stop_on_eos=False).tokens[0]
                same = (got == expected).int()
                matched = 64 if bool(same.all()) else int(same.argmin())
                log(f"fp32 greedy vs HF ({e32.mode}): {matched}/64 equal")
                del m32, e32
                torch.cuda.empty_cache()
        del e
    except Exception:
        log(f"{name}: FAILED\n{traceback.format_exc()[-2500:]}")
log("done")
