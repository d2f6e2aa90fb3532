"""P5.2 (the W4A16 kernel vs bf16 ``F.linear`` and torch's ``_weight_int4pack_mm``) and P5.3 (INT4 decode vs
phase 0's solution), GPU only.

Kernel timing: each version runs ``CALLS`` times inside one CUDA graph (device time, no launch cost — the
decode step replays its kernels the same way), rotating among enough weight copies that every call reads
its matrix from HBM, not from the 50 MB L2; per-call time = replay time / ``CALLS`` (median of 20 replays,
``module0_profiling.timing``). The INT4 copies are random codes/scales of the right shapes (speed does not
depend on the values); correctness at these shapes is the GPU tests' job, plus one check here per shape
against the dequantized matrix (ours and tinygemm's, so the peer is known to be set up right).
Results: ``reports/phase5_quantization/h100-80gb-hbm3.md``.
"""

from __future__ import annotations

import torch

from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from module0_profiling.timing import time_graph

MLP_SHAPES = [(2048, 5632), (5632, 2048)]  # (K, N): gate / up, down
ATTN_SHAPES = [(2048, 2560), (2048, 2048)]  # qkv, o
M_VALUES = (1, 16, 64)
CALLS = 48
L2_BYTES = 50e6


def graphed_seconds(fns: list, calls: int = CALLS) -> float:
    """Seconds per call of ``fns`` (rotating) captured ``calls`` times in one CUDA graph."""
    seq = [fns[i % len(fns)] for i in range(calls)]
    return time_graph(lambda: [f() for f in seq], calls_per_sample=1, iters=20, warmup=3).median / calls


def _copies(nbytes: float) -> int:
    return max(2, min(CALLS, int(4 * L2_BYTES / nbytes) + 1))


def _random_int4(n: int, k: int, seed: int):
    from phase5_quantization.packing import QuantizedWeight

    g = torch.Generator(device="cuda").manual_seed(seed)
    qweight = torch.randint(-2 ** 31, 2 ** 31 - 1, (n, k // 8), generator=g, device="cuda",
                            dtype=torch.int64).to(torch.int32)
    scales = (torch.rand(n, k // 128, generator=g, device="cuda") * 0.01 + 0.001).to(torch.float16)
    zeros = torch.randint(0, 16, (n, k // 128), generator=g, device="cuda", dtype=torch.int64).to(torch.uint8)
    return QuantizedWeight(qweight, scales, zeros, 128)


def kernel_speed(res: BenchResult) -> None:
    """P5.2: ours vs bf16 F.linear vs tinygemm at M = 1, 16, 64 on TinyLlama's projection shapes."""
    from phase5_quantization.kernels import to_kernel_layout, w4a16_linear
    from phase5_quantization.peers import int4pack_linear, int4pack_reason

    F = torch.nn.functional
    peer_reason = int4pack_reason()
    lines = ["| K → N | M | bf16 F.linear (µs) | tinygemm int4 (µs) | W4A16 (µs) | vs F.linear | vs tinygemm | "
             "W4A16 GB/s | max rel. err (ours / tinygemm) |", "|---|---|---|---|---|---|---|---|---|"]
    ratios: dict[tuple, tuple[float, float | None]] = {}
    for k, n in MLP_SHAPES + ATTN_SHAPES:
        int4_bytes = n * k / 2 + 3 * n * k / 128
        qws = [_random_int4(n, k, seed) for seed in range(_copies(int4_bytes))]
        kws = [to_kernel_layout(q) for q in qws]
        dense = [torch.randn(n, k, device="cuda",
                             dtype=torch.bfloat16) * 0.02 for _ in range(_copies(2 * n * k))]
        peers = []
        if peer_reason is None:
            try:
                peers = [int4pack_linear(q) for q in qws]
            except Exception as e:  # an op signature this torch does not have
                peer_reason = f"_weight_int4pack_mm failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
        for m in M_VALUES if (k, n) in MLP_SHAPES else (1,):  # attention shapes: decode (M = 1) only
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ qws[0].dequantize(torch.float32).t()
            err = float(((w4a16_linear(x, kws[0]).float() - ref).abs().max() / ref.abs().max()))
            t_lin = graphed_seconds([lambda w=w, x=x: F.linear(x, w) for w in dense])
            t_ours = graphed_seconds([lambda w=w, x=x: w4a16_linear(x, w) for w in kws])
            t_peer, peer_err = None, None
            if peers:
                peer_err = float(((peers[0](x).float() - ref).abs().max() / ref.abs().max()))
                t_peer = graphed_seconds([lambda p=p, x=x: p(x) for p in peers])
            ratios[(k, n, m)] = (t_lin / t_ours, t_peer / t_ours if t_peer else None)
            moved = int4_bytes + 2 * m * (k + n)
            res.comparisons.append(Comparison(f"W4A16 {k}→{n} M={m}", t_ours, moved, 2.0 * m * n * k))
            res.roofline.append(RooflinePoint(f"W4A16 {k}→{n} M={m}", 2.0 * m * n * k, moved, t_ours))
            peer_cols = (f"{t_peer * 1e6:.1f}", f"{t_peer / t_ours:.2f}×") if t_peer else ("—", "—")
            lines.append(f"| {k} → {n} | {m} | {t_lin * 1e6:.1f} | {peer_cols[0]} | {t_ours * 1e6:.1f} | "
                         f"{t_lin / t_ours:.2f}× | {peer_cols[1]} | {moved / t_ours / 1e9:.0f} | "
                         f"{err:.1e} / {'—' if peer_err is None else f'{peer_err:.1e}'} |")
        del qws, kws, dense, peers
        torch.cuda.empty_cache()
    mlp = [(k, n) for k, n in MLP_SHAPES]
    res.metrics["p5_2_kernel_vs_linear_m1"] = min(ratios[(k, n, 1)][0] for k, n in mlp)
    res.metrics["p5_2_kernel_vs_linear_m16"] = min(ratios[(k, n, 16)][0] for k, n in mlp)
    if peer_reason is None and all(ratios[(k, n, 1)][1] for k, n in mlp):
        res.metrics["p5_2_kernel_vs_int4pack"] = min(ratios[(k, n, m)][1] for k, n in mlp for m in (1, 16))
    else:
        res.skip("p5_2_kernel_vs_int4pack", peer_reason or "tinygemm did not run")
    res.tables["W4A16 kernel vs bf16 F.linear and tinygemm (CUDA-graph device time per call)"] = "\n".join(lines)
    res.notes.append("P5.2 metrics: the worse of TinyLlama's two MLP shapes (2048→5632, 5632→2048); vs tinygemm: "
                     "the worst of M = 1 and 16. Attention shapes are in the table only.")


def decode_speed(res: BenchResult, prompt_len: int = 512, new_tokens: int = 128, repeats: int = 5) -> None:
    """P5.3: INT4 (RTN) engine vs phase 0's solution, bs=1 decode on random:tinyllama in bf16."""
    from phase0_prototype import load_impl, load_model
    from phase0_prototype.bench import measure_generate, random_prompt
    from phase0_prototype.weights import decode_bytes_per_token
    from phase5_quantization.integration import Int4Engine, quantize_for_generate

    model = load_model("random:tinyllama", dtype="bf16", device="cuda", seed=0)
    cfg = model.config
    prompt = random_prompt(prompt_len, cfg.vocab_size, "cuda")
    max_seq = prompt_len + new_tokens
    base = load_impl("solution").build(model, max_seq_len=max_seq, compile=True)
    base.warmup()
    f_base = measure_generate(lambda k: base.generate(prompt, k, stop_on_eos=False), new_tokens, repeats)
    base_mode = base.mode
    base = None  # free its graphs and fused weights before the INT4 engine is built
    torch.cuda.empty_cache()
    q = quantize_for_generate(model, "rtn")
    dense_bytes = sum(2 * numel for numel in _projection_numels(cfg))
    engine = Int4Engine(model, q, max_seq_len=max_seq, compile=True)
    engine.warmup()
    f_int4 = measure_generate(lambda k: engine.generate(prompt, k, stop_on_eos=False), new_tokens, repeats)
    ctx = prompt_len + new_tokens // 2
    bytes_base = decode_bytes_per_token(cfg, model.dtype, ctx)
    bytes_int4 = bytes_base - dense_bytes + engine.weight_bytes()
    res.metrics["p5_3_decode_speedup"] = f_int4["decode_tok_s"] / f_base["decode_tok_s"]
    res.metrics["p5_3_weight_memory_ratio"] = dense_bytes / engine.weight_bytes()
    for name, f, b in (("phase 0 solution (bf16)", f_base, bytes_base),
                       ("INT4 engine (RTN, W4A16)", f_int4, bytes_int4)):
        res.comparisons.append(Comparison(f"decode bs=1: {name}", f["decode_s_per_token"], b, None,
                                          f"{f['decode_tok_s']:.0f} tok/s"))
    total_bf16 = 2 * cfg.num_parameters()
    total_int4 = total_bf16 - dense_bytes + engine.weight_bytes()
    res.tables["INT4 decode vs phase 0 (random:tinyllama, bs=1, bf16 activations)"] = "\n".join([
        "| engine | mode | decode tok/s | ms/token | bytes/token | achieved GB/s |", "|---|---|---|---|---|---|",
        f"| phase 0 solution | {base_mode} | {f_base['decode_tok_s']:.0f} | {f_base['decode_s_per_token'] * 1e3:.3f} | "
        f"{bytes_base / 1e9:.3f} GB | {bytes_base * f_base['decode_tok_s'] / 1e9:.0f} |",
        f"| INT4 (RTN) | {engine.mode} | {f_int4['decode_tok_s']:.0f} | {f_int4['decode_s_per_token'] * 1e3:.3f} | "
        f"{bytes_int4 / 1e9:.3f} GB | {bytes_int4 * f_int4['decode_tok_s'] / 1e9:.0f} |",
        "", f"Projection weights: {dense_bytes / 1e9:.3f} GB in bf16, {engine.weight_bytes() / 1e9:.3f} GB as INT4 "
        f"({dense_bytes / engine.weight_bytes():.2f}× smaller); whole model (embeddings and lm_head stay bf16): "
        f"{total_bf16 / 1e9:.3f} GB → {total_int4 / 1e9:.3f} GB ({total_bf16 / total_int4:.2f}×)."])
    try:
        from module0_profiling.trace import profile_region

        res.trace = profile_region(lambda: engine.generate(prompt, 16, stop_on_eos=False), iters=1, warmup=1)
        res.trace_region = f"INT4 engine ({engine.mode}): prefill of {prompt_len} tokens + 15 decode steps"
    except Exception as e:  # the profiler is optional
        res.notes.append(f"trace unavailable: {type(e).__name__}: {e}")


def _projection_numels(cfg) -> list[int]:
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_layer = (cfg.q_size + 2 * cfg.kv_size) * h + h * cfg.q_size + 2 * i * h + h * i
    return [per_layer] * cfg.num_hidden_layers
