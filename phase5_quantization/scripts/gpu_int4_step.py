"""Where the INT4 decode step's time goes, and what each launch choice buys in it (random:tinyllama, RTN,
bs=1, prompt 512: the P5.3 setting), one GPU run.

1. Variants of the whole step (phase 0's ``fused_decode_step`` over INT4 layers in the engine's CUDA graph): the launcher's
   default; programmatic dependent launch off; the row GEMV's launch choices flipped one at a time
   (``dev.row_gemv_variants.RowVariant``: early launch, early scales/residual, tail slab); the lm_head as
   INT4; one projection's row-GEMV tiles changed at a time; and, a diagnostic with wrong tokens, attention
   replaced by a view of q. For each: graph replay (µs per step, best of 3 × 100) and agreement of the first
   16 greedy tokens with the default; for the default and the INT4 lm_head also decode through ``generate``
   (P5.3).
2. The pieces, each captured alone for the 22 layers: every projection with its fusion (product launch, and
   without early scales), the four in step order, attention, the lm_head. What the step loses against the sum
   of its pieces is what the boundaries between kernels cost.

``--ncu``: a few single kernels for Nsight Compute instead (gate_up and down at 1 and 16 rows); ``--ncu-m16``:
P5.2's plain 16-row products with the default (Gluon on Hopper) and the Triton small-batch kernel.
Results of past runs: ``phase5_quantization/NOTES.md``. The bf16 GEMV's and attention's own early-launch
variants are phase 0's (``phase0_prototype/scripts/gpu_pdl_variants.py``).

Usage (repo root, GPU): PYTHONPATH=$PWD python3 -m phase5_quantization.scripts.gpu_int4_step [--ncu|--ncu-m16]
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback

import torch

T0 = time.time()
PROMPT, NEW, CTX = 512, 128, 576


def log(*a):
    print(f"[{time.time() - T0:5.0f}s]", *a, flush=True)


@torch.inference_mode()
def replay_us(engine):
    """µs per replay of the engine's decode-step graph at position ``CTX`` (phase 0's ``decode_replay``), best
    of 3."""
    from phase0_prototype.bench import decode_replay

    return decode_replay(engine, CTX).best * 1e6


def ncu_main() -> None:
    from phase5_quantization.bench_speed import _random_int4
    from phase5_quantization.kernels import launch, to_kernel_layout, w4a16_linear

    for (n_rows, k, fusion) in ((11264, 2048, "swiglu"), (2048, 5632, "residual")):
        w = to_kernel_layout(_random_int4(n_rows, k, 0))
        g = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            res = torch.randn(m, n_rows, device="cuda", dtype=torch.bfloat16)
            kw = dict(norm_weight=g, eps=1e-5, swiglu=True) if fusion == "swiglu" else dict(residual=res)
            for _ in range(3):  # the launcher's kernel: the row GEMV at one row, the small-batch kernel at 16
                w4a16_linear(x, w, **kw)
            torch.cuda.synchronize()
            log(f"ncu: {n_rows}x{k} {fusion} M={m} {launch.kernel_for(m, True)}")


def ncu_m16_main() -> None:
    """``--ncu-m16``: P5.2's plain M = 16 products (2048 → 5632 and 5632 → 2048) with the launcher's default
    kernel (the Gluon one on Hopper) and the Triton small-batch kernel, for Nsight Compute."""
    from phase5_quantization.bench_speed import _random_int4
    from phase5_quantization.kernels import to_kernel_layout, w4a16_linear

    for n, k in ((5632, 2048), (2048, 5632)):
        w = to_kernel_layout(_random_int4(n, k, 0))
        x = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
        for c in (None, {"KERNEL": "mma"}):
            for _ in range(2):
                w4a16_linear(x, w, config=c)
            torch.cuda.synchronize()
            log(f"ncu: {n}x{k} M=16 {c or 'default'}")


@torch.inference_mode()
def main() -> None:
    from module0_profiling.hardware import measured_peaks
    from phase0_prototype import bench, load_model
    from phase0_prototype.kernels import decode_attention
    from phase5_quantization.integration import Int4Engine, quantize_for_generate

    peak = measured_peaks().copy_gbps
    log(f"{torch.cuda.get_device_name()} copy {peak:.0f} GB/s, torch {torch.__version__}")
    model = load_model("random:tinyllama", dtype="bf16", device="cuda", seed=0)
    cfg = model.config
    prompt = bench.random_prompt(PROMPT, cfg.vocab_size, "cuda")
    q = quantize_for_generate(model, "rtn")
    real_attention = decode_attention.rope_cache_attention

    def no_attention(qkv, k_cache, v_cache, cos, sin, positions, n_heads, rope=True):
        return qkv[:, : n_heads * k_cache.shape[-1]]

    from phase0_prototype.dev import pdl_off
    from phase5_quantization.dev.row_gemv_variants import RowVariant, use_row_variant, variant_layers

    o_, qkv_, gu_, dn_ = (2048, 2048, False), (2560, 2048, False), (5632, 2048, True), (2048, 5632, False)
    variants = [("default (launcher's table)", dict(generate=True)),
                ("PDL off", dict(pdl_off=True)),
                ("row GEMVs let the next kernel launch before their wait",
                 dict(row=RowVariant(early=True))),
                ("row GEMVs read scales/zeros/residual where used", dict(row=RowVariant(prefetch=False))),
                ("row GEMVs end a row in a masked full slab, no tail slab",
                 dict(row=RowVariant(tail=False))),
                ("lm_head INT4 too", dict(lm_head=True, generate=True)),
                ("diagnostic: no attention", dict(no_attention=True)),
                ("o (4, 256, 2 warps)", dict(tiles={o_: (4, 256, 1, 2, 0)})),
                ("o (2, 256, 2 warps), no register cap", dict(tiles={o_: (2, 256, 1, 2, 0)})),
                ("qkv (4, 256, 2 warps), no register cap", dict(tiles={qkv_: (4, 256, 1, 2, 0)})),
                ("qkv (8, 256, 2 warps)", dict(tiles={qkv_: (8, 256, 1, 2, 0)})),
                ("gate_up (2, 256, 2 warps)", dict(tiles={gu_: (2, 256, 1, 2, 0)})),
                ("gate_up (4, 256, 2 warps)", dict(tiles={gu_: (4, 256, 1, 2, 0)})),
                ("down (4, 256, 2 warps)", dict(tiles={dn_: (4, 256, 1, 2, 0)})),
                ("down (4, 256, 2 warps, 96 registers): the sweep's",
                 dict(tiles={dn_: (4, 256, 1, 2, 96)})),
                ("down (4, 256, 2 warps), split-K 2", dict(tiles={dn_: (4, 256, 2, 2, 0)})),
                ("default again (drift)", {})]
    ref = None
    q_lm = None
    for name, opts in variants:
        # the diagnostic swaps phase 0's attention for a stub (no launch choice of this phase)
        decode_attention.rope_cache_attention = no_attention if opts.get("no_attention") else real_attention
        try:
            with pdl_off() if opts.get("pdl_off") else contextlib.nullcontext():  # capture and replay alike
                if opts.get("lm_head") and q_lm is None:
                    q_lm = quantize_for_generate(model, "rtn", quantize_lm_head=True)
                e = Int4Engine(model, q_lm if opts.get("lm_head") else q, max_seq_len=PROMPT + NEW, compile=True)
                if "row" in opts or "tiles" in opts:
                    use_row_variant(e, opts.get("row", RowVariant()), opts.get("tiles"))
                e.warmup()
                toks = e.generate(prompt, 16, stop_on_eos=False).tokens
                ref = toks if ref is None else ref
                agree = (toks == ref).float().mean().item()
                us = replay_us(e)
                line = f"{name:54s}: replay {us:6.1f} us/step; agree16 {agree:.2f}"
                if opts.get("generate"):
                    fig = bench.measure_generate(lambda k, e=e: e.generate(prompt, k, stop_on_eos=False), NEW, 5)
                    line += (f"; generate decode {fig['decode_s_per_token'] * 1e6:6.1f} us/token "
                             f"({fig['decode_tok_s']:.0f} tok/s)")
                log(line)
                del e
        except Exception:
            log(f"{name}: FAILED\n{traceback.format_exc()[-2500:]}")
        torch.cuda.empty_cache()
    decode_attention.rope_cache_attention = real_attention

    # the pieces, 22 layers each
    e = Int4Engine(model, q, max_seq_len=PROMPT + NEW, compile=False)
    layer_sets = {"row": e.weights.layers,
                  "row, no prefetch": variant_layers(e.weights.layers, RowVariant(prefetch=False))}
    eps = cfg.rms_norm_eps
    x, attn, act, res, qkv = bench.step_inputs(cfg, "cuda").values()
    positions = torch.full((1,), CTX, device="cuda", dtype=torch.long)
    ops = {
        "qkv (RMSNorm)": (lambda lw: lw.qkv_proj(x, norm_weight=lw.input_norm, eps=eps),
                          lambda lw: lw.qkv_proj),
        "o (+residual)": (lambda lw: lw.o_proj(attn, residual=res, out=res), lambda lw: lw.o_proj),
        "gate_up (RMSNorm, SwiGLU)": (
            lambda lw: lw.gate_up_proj(x, norm_weight=lw.post_norm, eps=eps, swiglu=True),
            lambda lw: lw.gate_up_proj),
        "down (+residual)": (lambda lw: lw.down_proj(act, residual=res, out=res), lambda lw: lw.down_proj),
    }
    total = {}
    for which, layers in layer_sets.items():
        for name, (call, lin) in ops.items():
            nbytes = sum(lin(lw).nbytes() for lw in layers) / len(layers)
            us = bench.graph_us(lambda call=call, layers=layers: [call(lw) for lw in layers]) / len(layers)
            total[which] = total.get(which, 0.0) + us
            log(f"{which:16s} {name:26s}: {us:6.2f} us per layer  {nbytes / us / 1e3:6.0f} GB/s = "
                f"{100 * nbytes / us / 1e3 / peak:5.1f} % copy")
        chain = bench.graph_us(lambda layers=layers: [
            [call(lw) for call, _ in ops.values()] for lw in layers]) / len(layers)
        log(f"{which:16s} the four in step order (no attention): {chain:6.2f} us per layer (sum of parts "
            f"{total[which]:6.2f}); x22 = {22 * chain:6.1f} us")
    layers = e.weights.layers
    att = bench.graph_us(lambda: [real_attention(qkv, e.kv_cache[i, 0], e.kv_cache[i, 1], e.cos, e.sin,
                                                 positions, cfg.num_attention_heads, rope=e.fused_rope)
                                  for i in range(len(layers))])
    log(f"attention (RoPE + cache write + attend), 22 layers: {att:6.1f} us")
    lm = bench.graph_us(lambda: e.weights.lm_head(x, norm_weight=e.weights.norm, eps=eps))
    log(f"lm_head (bf16, RMSNorm fused): {lm:6.1f} us")
    log("done")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("this diagnostic times CUDA graphs: it needs a CUDA GPU")
    ncu_m16_main() if "--ncu-m16" in sys.argv else ncu_main() if "--ncu" in sys.argv else main()
