"""Phase 3 bench: paged decode and varlen prefill — framework vs solution vs PyTorch vs the roofline, one run.

- P3.1 correctness: decode (and prefill) vs the float32 SDPA reference on gathered KV over a ragged batch
  of lengths 1, 17, 100, 1000, 4097 and block sizes 16–128 (``small``: 1, 17, 100 and 16, 32 under the
  Triton interpreter), reported as worst |error| / tolerance (≤ 1 passes).
- P3.2 / P3.3: decode at batch 64, context 4096 (32 q / 4 kv heads, head_dim 64, bf16, block 16) vs the
  PyTorch paged baseline (gather + SDPA), and its counted bytes (K and V once, q, out) per second over
  the measured copy bandwidth. Dense SDPA on contiguous KV is the upper peer (no paging, no gather).
- P3.4: causal prefill 8 × 2048 vs SDPA's flash backend, TFLOP/s from the counted causal FLOPs.
- P3.5 (the sweeps): block sizes 16/32/64/128 and batch × context, solution vs baseline in every cell.
- P3.6: FlashInfer (``peers.py``) in the same run: its outputs vs the float32 reference first (P3.1's ragged
  batch, every block size: this checks the page-list conversion), then its batch decode at 64 × 4096 and over
  the batch × context sweep, and its ragged causal prefill at 8 × 2048, against ``impl``. No FlashInfer: SKIP.
"""

from __future__ import annotations

import torch

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.roofline import attention_decode_bytes, attention_decode_flops, attention_prefill_flops
from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from module0_profiling.timing import capture_cuda_graph, time_fn
from phase3_paged_attention import load_impl, tolerance
from phase3_paged_attention.peers import (
    DECODE_VARIANTS,
    FlashInferPeer,
    build_peer,
    error_over_tolerance,
    try_build,
)
from phase3_paged_attention.reference import dense_decode_attention
from phase3_paged_attention.workloads import DecodeInputs, decode_inputs, prefill_inputs

HEADS = {"full": dict(num_q_heads=32, num_kv_heads=4, head_dim=64), "small": dict(num_q_heads=4, num_kv_heads=2, head_dim=32)}
CORRECTNESS = {"full": ([1, 17, 100, 1000, 4097], [16, 32, 64, 128]), "small": ([1, 17, 100], [16, 32])}
DECODE = dict(batch=64, context=4096, block_size=16)
PREFILL = dict(batch=8, seqlen=2048)
SWEEP_BLOCKS = [16, 32, 64, 128]
SWEEP_BATCH_CONTEXT = [(1, 512), (1, 4096), (1, 16384), (8, 512), (8, 4096), (8, 16384), (64, 512), (64, 4096),
                       (64, 16384)]
FLASHINFER_METRICS = ["p3_6_decode_fraction_of_flashinfer", "p3_6_prefill_fraction_of_flashinfer",
                      "p3_6_flashinfer_error_over_tolerance", "p3_6_sweep_min_decode_fraction_of_flashinfer"]
GPU_METRICS = ["decode_speedup_vs_paged_baseline", "decode_copy_bw_fraction", "prefill_tflops_vs_sdpa_flash",
               "sweep_min_speedup_vs_paged_baseline", *FLASHINFER_METRICS]


def _worst_error(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> float:
    atol, rtol = tolerance(dtype)
    err = (out.float() - expected.float()).abs()
    if not torch.isfinite(out.float()).all():
        return float("inf")
    return float((err / (atol + rtol * expected.float().abs())).max()) if err.numel() else 0.0


def correctness(impl, size: str, device: str, dtype: torch.dtype) -> tuple[float, float, list[str]]:
    """Worst error / tolerance of decode (every block size) and of prefill with the cache write."""
    ref = load_impl("reference")
    lengths, blocks = CORRECTNESS[size]
    rows, decode_worst = [], 0.0
    for i, block_size in enumerate(blocks):
        d = decode_inputs(lengths, block_size=block_size, dtype=dtype, device=device, seed=100 + i, **HEADS[size])
        w = _worst_error(impl.paged_decode_attention(*d.args()), ref.paged_decode_attention(*d.args(), upcast=True), dtype)
        decode_worst = max(decode_worst, w)
        rows.append(f"| decode | {block_size} | {w:.3f} |")
    p = prefill_inputs(lengths, block_size=blocks[0], dtype=dtype, device=device, seed=7, **HEADS[size])
    k_cache, v_cache = p.k_cache.clone(), p.v_cache.clone()
    out = impl.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, k_cache=k_cache, v_cache=v_cache,
                                        slot_mapping=p.slot_mapping)
    prefill_worst = _worst_error(out, ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, upcast=True), dtype)
    ref.write_kv_cache(p.k, p.v, p.k_cache, p.v_cache, p.slot_mapping)
    if not (torch.equal(k_cache, p.k_cache) and torch.equal(v_cache, p.v_cache)):
        prefill_worst = float("inf")  # the fused cache write put a row in the wrong slot
    rows.append(f"| prefill + cache write | {blocks[0]} | {prefill_worst:.3f} |")
    return decode_worst, prefill_worst, rows


def _decode_fn(impl, d: DecodeInputs):
    out = torch.empty_like(d.q)
    return lambda: impl.paged_decode_attention(*d.args(), max_context_len=d.max_context_len, out=out)


def time_decode(impl, sets: list[DecodeInputs], iters: int = 20) -> float:
    """Median seconds per decode call, rotating among input sets."""
    outs = [torch.empty_like(d.q) for d in sets]
    calls = [(d, o) for d, o in zip(sets, outs, strict=True)]
    return time_fn(lambda c: impl.paged_decode_attention(*c[0].args(), max_context_len=c[0].max_context_len, out=c[1]),
                   inputs=calls, warmup=3, iters=iters).median


def time_graphed(fns: list, iters: int = 20) -> float:
    """Median seconds per call of ``fns`` captured in CUDA graphs (rotating): device time, no launch cost."""
    graphs = [capture_cuda_graph(fn) for fn in fns]
    return time_fn(lambda g: g.replay(), inputs=graphs, warmup=3, iters=iters).median


def time_decode_graphed(impl, sets: list[DecodeInputs], iters: int = 20) -> float:
    return time_graphed([_decode_fn(impl, d) for d in sets], iters)


def time_dense(sets: list[DecodeInputs], iters: int = 20, graphed: bool = False) -> float:
    dense = [(d.q, *d.contiguous_kv()) for d in sets]
    if graphed:
        return time_graphed([lambda x=x: dense_decode_attention(*x) for x in dense], iters)
    return time_fn(lambda x: dense_decode_attention(*x), inputs=dense, warmup=3, iters=iters).median


def decode_bytes(batch: int, context: int, heads: dict, elem: int = 2) -> float:
    return attention_decode_bytes(batch, heads["num_q_heads"], heads["num_kv_heads"], heads["head_dim"], context, elem)


def sdpa_flash_prefill(batch: int, seqlen: int, heads: dict, dtype: torch.dtype) -> tuple[float, str]:
    """Seconds of SDPA's flash backend, causal, on [batch, heads, seqlen, head_dim]: the faster of native GQA
    (``enable_gqa``) and K/V repeated to every q head beforehand (the repeat is not timed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    hq, hkv, dim = heads["num_q_heads"], heads["num_kv_heads"], heads["head_dim"]
    q = torch.randn(batch, hq, seqlen, dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, hkv, seqlen, dim, device="cuda", dtype=dtype)
    v = torch.randn(batch, hkv, seqlen, dim, device="cuda", dtype=dtype)
    k_rep, v_rep = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    variants = {
        "native GQA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "K/V repeated": lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True),
    }
    timed = {}
    for how, fn in variants.items():
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                timed[how] = time_fn(fn, warmup=3, iters=20).median
        except (RuntimeError, TypeError):  # this torch's flash backend does not take the variant
            continue
    if not timed:
        raise RuntimeError("SDPA's flash backend does not run on this GPU/torch")
    how = min(timed, key=timed.get)
    detail = ", ".join(f"{h} {attention_prefill_flops(batch, hq, dim, seqlen) / t / 1e12:.0f} TFLOP/s" for h, t in timed.items())
    return timed[how], f"flash backend, best of: {detail}"


def bench_prefill(res: BenchResult, impls: dict, impl_name: str, dtype: torch.dtype) -> None:
    heads, batch, seqlen = HEADS["full"], PREFILL["batch"], PREFILL["seqlen"]
    p = prefill_inputs([seqlen] * batch, block_size=DECODE["block_size"], dtype=dtype, device="cuda", seed=1, **heads)
    flops = attention_prefill_flops(batch, heads["num_q_heads"], heads["head_dim"], seqlen, causal=True)
    io_bytes = (p.q.numel() * 2 + p.k.numel() * 2 + p.v.numel() * 2) * p.q.element_size()
    t_sdpa, how = sdpa_flash_prefill(batch, seqlen, heads, dtype)
    times = {}
    for name, impl in impls.items():
        out = torch.empty_like(p.q)
        fn = lambda impl=impl, out=out: impl.varlen_prefill_attention(  # noqa: E731
            p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, k_cache=p.k_cache, v_cache=p.v_cache,
            slot_mapping=p.slot_mapping, out=out)
        times[name] = time_fn(fn, warmup=3, iters=10 if name == "framework" else 20).median
    res.metrics["prefill_tflops_vs_sdpa_flash"] = t_sdpa / times[impl_name]
    res.context["prefill"] = (f"causal, {batch} × {seqlen} tokens, 32 q / 4 kv heads, head_dim 64, {dtype}; "
                              f"peer: SDPA {how}; FLOPs counted as 4·B·H·S²·D / 2")
    for name, t in times.items():
        res.comparisons.append(Comparison(f"prefill {name}", t, io_bytes, flops,
                                          "Triton FA-2 + cache write" if name == "solution" else ""))
        res.roofline.append(RooflinePoint(f"prefill {name}", flops, io_bytes, t))
    res.comparisons.append(Comparison("prefill SDPA (flash)", t_sdpa, io_bytes, flops, "peer"))
    res.roofline.append(RooflinePoint("prefill SDPA flash", flops, io_bytes, t_sdpa))


def bench_decode(res: BenchResult, impls: dict, impl_name: str, dtype: torch.dtype, copy_gbps: float) -> None:
    """Eager calls (what a caller sees, launch cost included) and CUDA-graph replays (the kernels' device time)."""
    heads, batch, context, block = HEADS["full"], DECODE["batch"], DECODE["context"], DECODE["block_size"]
    sets = [decode_inputs([context] * batch, block_size=block, dtype=dtype, device="cuda", seed=s, spare_blocks=0,
                          **heads) for s in range(4)]  # 4 block-table layouts, rotated: no layout is lucky
    nbytes = decode_bytes(batch, context, heads)
    flops = attention_decode_flops(batch, heads["num_q_heads"], heads["head_dim"], context)
    times = {name: time_decode(impl, sets) for name, impl in impls.items()}
    times["reference"] = time_decode(load_impl("reference"), sets)
    t_graph = time_decode_graphed(impls[impl_name], sets, iters=40)
    t_dense, t_dense_graph = time_dense(sets), time_dense(sets, graphed=True)
    res.metrics["decode_speedup_vs_paged_baseline"] = times["reference"] / times[impl_name]
    res.metrics["decode_copy_bw_fraction"] = nbytes / times[impl_name] / 1e9 / copy_gbps
    res.context["decode"] = (f"batch {batch}, context {context}, block {block}, 32 q / 4 kv heads, head_dim 64, "
                             f"{dtype}; {nbytes / 1e6:.0f} MB must move per call (K, V once; q; out)")
    res.context["P3.2 / P3.3 timing"] = (
        f"module0 time_fn on eager calls, rotating 4 block-table layouts ({impl_name} {times[impl_name] * 1e6:.1f} µs = "
        f"{100 * nbytes / times[impl_name] / 1e9 / copy_gbps:.1f} % of copy BW); the same calls replayed from CUDA "
        f"graphs (device time, no launch cost): {t_graph * 1e6:.1f} µs = {100 * nbytes / t_graph / 1e9 / copy_gbps:.1f} %")
    res.context["dense peer"] = (f"SDPA on contiguous KV: {nbytes / t_dense / 1e9:.0f} GB/s eager, "
                                 f"{nbytes / t_dense_graph / 1e9:.0f} GB/s graphed "
                                 f"({100 * nbytes / t_dense_graph / 1e9 / copy_gbps:.1f} % of copy BW)")
    labels = {"reference": "PyTorch paged baseline (gather + SDPA)"}
    for name, t in times.items():
        res.comparisons.append(Comparison(f"decode {labels.get(name, name)}", t, nbytes, flops, "eager"))
        res.roofline.append(RooflinePoint(f"decode {name}", flops, nbytes, t))
    res.comparisons.append(Comparison(f"decode {impl_name}, CUDA graph", t_graph, nbytes, flops, "device time"))
    res.roofline.append(RooflinePoint(f"decode {impl_name} (graph)", flops, nbytes, t_graph))
    res.comparisons.append(Comparison("decode dense SDPA, contiguous KV", t_dense, nbytes, flops, "upper peer, eager"))
    res.comparisons.append(Comparison("decode dense SDPA, contiguous KV, CUDA graph", t_dense_graph, nbytes, flops,
                                      "upper peer, device time"))
    res.roofline.append(RooflinePoint("decode dense SDPA (graph)", flops, nbytes, t_dense_graph))
    _profile(res, impls[impl_name], sets[0], impl_name)


def _profile(res: BenchResult, impl, d: DecodeInputs, impl_name: str) -> None:
    try:
        from module0_profiling.trace import ncu_status, profile_region, run_ncu
    except ImportError as e:
        res.ncu_reason = f"module0_profiling.trace unavailable: {e}"
        return
    res.trace = profile_region(_decode_fn(impl, d), iters=10, warmup=2)
    res.trace_region = f"10 decode calls, batch 64, context 4096 ({impl_name})"
    reason = ncu_status()
    if reason:
        res.ncu_reason = reason + "; HBM bytes are counted (K and V once), not measured"
        return
    try:
        res.ncu = run_ncu(NCU_SNIPPET.format(impl=impl_name), kernel_regex="decode|combine", launch_count=4)
    except Exception as e:  # ncu present but unable to read counters (permissions, virtualised GPU)
        res.ncu_reason = f"ncu failed: {e}; HBM bytes are counted, not measured"


NCU_SNIPPET = """
import torch
from phase3_paged_attention import load_impl
from phase3_paged_attention.workloads import decode_inputs
d = decode_inputs([4096] * 64, block_size=16, dtype=torch.bfloat16, device='cuda', num_q_heads=32, num_kv_heads=4, head_dim=64)
impl = load_impl({impl!r})
impl.paged_decode_attention(*d.args()); torch.cuda.synchronize()
with torch.cuda.nvtx.range("titaninfer"):
    impl.paged_decode_attention(*d.args())
torch.cuda.synchronize()
"""


def _tuned_splits(batch: int, context: int) -> str:
    """The split count the solution's tuner settled on for this shape (— when none was tuned)."""
    from phase3_paged_attention.kernels.decode_flash import _tuned
    from phase3_paged_attention.kernels.launch import next_pow2

    for key, choice in _tuned.items():
        if key[-2:] == (next_pow2(batch), next_pow2(context)) and key[5] == 16:
            order = ", heads first" if choice[4] else ""
            return f"{choice[0]} (tile {choice[1]}, {choice[2]} warps, {choice[3]} stages{order})"
    return "—"


def bench_sweeps(res: BenchResult, impls: dict, impl_name: str, dtype: torch.dtype, copy_gbps: float,
                 flashinfer: tuple[FlashInferPeer, list[bool]] | None = None) -> None:
    """P3.5: block size at batch 64 × 4096, then batch × context at block 16; speed-up vs baseline in every cell,
    and vs FlashInfer's faster decode variant when ``flashinfer`` = (peer, use_tensor_cores values that built)."""
    heads, ref, impl = HEADS["full"], load_impl("reference"), impls[impl_name]
    speedups = []
    rows = []
    for block in SWEEP_BLOCKS:
        d = decode_inputs([DECODE["context"]] * DECODE["batch"], block_size=block, dtype=dtype, device="cuda",
                          seed=block, spare_blocks=0, **heads)
        nbytes = decode_bytes(DECODE["batch"], DECODE["context"], heads)
        t = {name: time_decode(m, [d], iters=10) for name, m in impls.items()}
        t_graph = time_decode_graphed(impl, [d], iters=10)
        t_ref = time_decode(ref, [d], iters=10)
        speedups.append(t_ref / t[impl_name])
        cells = " | ".join(f"{nbytes / t[n] / 1e9:.0f}" for n in impls)
        rows.append(f"| {block} | {cells} | {nbytes / t_graph / 1e9:.0f} | {100 * nbytes / t_graph / 1e9 / copy_gbps:.1f} % | "
                    f"{nbytes / t_ref / 1e9:.0f} | {t_ref / t[impl_name]:.2f}× |")
    head = " | ".join(f"{n} GB/s" for n in impls)
    res.tables["P3.5a Block-size sweep (decode, batch 64, context 4096)"] = (
        f"| block size | {head} (eager) | {impl_name} GB/s (graph) | % of copy BW (graph) | baseline GB/s | "
        f"{impl_name} vs baseline (eager) |\n|---|{'---|' * len(impls)}---|---|---|---|\n" + "\n".join(rows))
    rows, fractions = [], []
    for batch, context in SWEEP_BATCH_CONTEXT:
        d = decode_inputs([context] * batch, block_size=16, dtype=dtype, device="cuda", seed=batch + context,
                          spare_blocks=0, **heads)
        nbytes = decode_bytes(batch, context, heads)
        t_impl = time_decode(impl, [d], iters=10)
        t_graph = time_decode_graphed(impl, [d], iters=10)
        t_ref = time_decode(ref, [d], iters=10)
        t_dense = time_dense([d], iters=10, graphed=True)
        speedups.append(t_ref / t_impl)
        fi_cells = ""
        if flashinfer is not None:
            peer, variants = flashinfer
            t_fi = min(time_fn(peer.decode(d, tc), warmup=3, iters=10).median for tc in variants)
            fractions.append(t_fi / t_impl)
            fi_cells = f" {nbytes / t_fi / 1e9:.0f} | {100 * t_fi / t_impl:.0f} % |"
        rows.append(f"| {batch} | {context} | {_tuned_splits(batch, context)} | {t_impl * 1e6:.1f} | "
                    f"{t_graph * 1e6:.1f} | {nbytes / t_graph / 1e9:.0f} | {100 * nbytes / t_graph / 1e9 / copy_gbps:.1f} % | "
                    f"{nbytes / t_ref / 1e9:.0f} | {nbytes / t_dense / 1e9:.0f} | {t_ref / t_impl:.2f}× |{fi_cells}")
    fi_head, fi_rule = (" FlashInfer GB/s (eager, faster variant) | vs FlashInfer (eager) |", "---|---|") if fractions else ("", "")
    res.tables["P3.5b Batch × context sweep (decode, block 16)"] = (
        f"| batch | context | splits (solution, tuned) | {impl_name} µs eager | µs graph | GB/s graph | "
        f"% copy BW | baseline GB/s (eager) | dense SDPA GB/s (graph) | vs baseline (eager) |{fi_head}\n"
        f"|---|---|---|---|---|---|---|---|---|---|{fi_rule}\n" + "\n".join(rows))
    res.metrics["sweep_min_speedup_vs_paged_baseline"] = min(speedups)
    if fractions:
        res.metrics["p3_6_sweep_min_decode_fraction_of_flashinfer"] = min(fractions)


def bench_flashinfer(res: BenchResult, impl, dtype: torch.dtype) -> tuple[FlashInferPeer, list[bool]] | None:
    """P3.6: FlashInfer's outputs against the float32 reference, then its decode and prefill against ``impl``."""
    peer, reason = build_peer()
    if peer is None:
        for metric in FLASHINFER_METRICS:
            res.skip(metric, reason)
        return None
    ref, heads, failures, errors = load_impl("reference"), HEADS["full"], {}, []
    variants, label = list(DECODE_VARIANTS.values()), {tc: name for name, tc in DECODE_VARIANTS.items()}
    lengths, blocks = CORRECTNESS["full"]
    for i, block_size in enumerate(blocks):  # P3.1's ragged batch: pages, partial last pages, every block size
        d = decode_inputs(lengths, block_size=block_size, dtype=dtype, device="cuda", seed=200 + i, **heads)
        expected = ref.paged_decode_attention(*d.args(), upcast=True)
        for tc in list(variants):
            call, why = try_build(peer.decode, d, tc)
            if call is None:
                variants.remove(tc)
                failures[label[tc]] = why
            else:
                errors.append(error_over_tolerance(call(), expected))
    batch, context = DECODE["batch"], DECODE["context"]
    sets = [decode_inputs([context] * batch, block_size=DECODE["block_size"], dtype=dtype, device="cuda", seed=s,
                          spare_blocks=0, **heads) for s in range(4)]
    nbytes = decode_bytes(batch, context, heads)
    flops = attention_decode_flops(batch, heads["num_q_heads"], heads["head_dim"], context)
    t_impl = time_decode(impl, sets)
    t_fi = {tc: time_fn(lambda c: c(), inputs=[peer.decode(d, tc) for d in sets], warmup=3, iters=20).median
            for tc in variants}
    for tc, t in t_fi.items():
        res.comparisons.append(Comparison(label[tc], t, nbytes, flops, "peer, eager, planned once"))
        res.roofline.append(RooflinePoint(label[tc], flops, nbytes, t))
    if t_fi:
        res.metrics["p3_6_decode_fraction_of_flashinfer"] = min(t_fi.values()) / t_impl
    else:
        res.skip("p3_6_decode_fraction_of_flashinfer", "; ".join(failures.values()))

    seqlen, pbatch = PREFILL["seqlen"], PREFILL["batch"]
    p = prefill_inputs([seqlen] * pbatch, block_size=DECODE["block_size"], dtype=dtype, device="cuda", seed=1, **heads)
    call, why = try_build(peer.prefill, p)
    if call is None:
        res.skip("p3_6_prefill_fraction_of_flashinfer", why)
        failures["flashinfer ragged prefill"] = why
    else:
        errors.append(error_over_tolerance(call(), ref.varlen_prefill_attention(
            p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, upcast=True)))
        out = torch.empty_like(p.q)
        t_ours = time_fn(lambda: impl.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, out=out),
                         warmup=3, iters=20).median
        t_peer = time_fn(call, warmup=3, iters=20).median
        pflops = attention_prefill_flops(pbatch, heads["num_q_heads"], heads["head_dim"], seqlen, causal=True)
        io_bytes = (p.q.numel() * 2 + p.k.numel() * 2 + p.v.numel() * 2) * p.q.element_size()
        res.metrics["p3_6_prefill_fraction_of_flashinfer"] = t_peer / t_ours
        res.comparisons.append(Comparison("prefill, attention only (no cache write)", t_ours, io_bytes, pflops,
                                          "P3.6's side of the comparison"))
        res.comparisons.append(Comparison("prefill flashinfer (ragged, causal)", t_peer, io_bytes, pflops, "peer"))
        res.roofline.append(RooflinePoint("prefill flashinfer", pflops, io_bytes, t_peer))
    if errors:
        res.metrics["p3_6_flashinfer_error_over_tolerance"] = max(errors)
    else:
        res.skip("p3_6_flashinfer_error_over_tolerance", "no FlashInfer kernel built, so none was checked")
    if errors and max(errors) > 1:
        res.notes.append(f"FAIL: FlashInfer's outputs are {max(errors):.3g} × tolerance from the float32 reference; "
                         "the page-list conversion (peers.to_flashinfer_layout) or the call is wrong: P3.6 fails.")
    res.context["P3.6 FlashInfer"] = "; ".join([f"decode timed with: {', '.join(label[tc] for tc in t_fi) or 'none'}",
                                                *(f"{what} absent: {why}" for what, why in failures.items())])
    return (peer, variants) if variants else None


def run(impl: str = "solution", size: str = "full") -> BenchResult:
    device = detect_device()
    on_gpu = device.is_cuda and size == "full"
    dtype = torch.bfloat16
    candidate = load_impl(impl)
    res = BenchResult(context={
        "impl": impl, "device": device.name,
        "heads": "32 q / 4 kv heads, head_dim 64 (TinyLlama)" if on_gpu else "4 q / 2 kv heads, head_dim 32 (small)",
    })
    dev = "cuda" if device.is_cuda else "cpu"
    decode_worst, prefill_worst, rows = correctness(candidate, "full" if on_gpu else "small", dev, dtype)
    res.metrics["decode_error_over_tolerance"] = decode_worst
    res.metrics["prefill_error_over_tolerance"] = prefill_worst
    lengths, blocks = CORRECTNESS["full" if on_gpu else "small"]
    res.context["P3.1 shapes"] = f"lengths {lengths} in one ragged batch, block sizes {blocks}, bf16"
    res.tables["P3.1 Correctness (worst |error| / tolerance; ≤ 1 passes)"] = (
        "| kernel | block size | worst error / tolerance |\n|---|---|---|\n" + "\n".join(rows))
    if not on_gpu:
        reason = "needs a CUDA GPU and size=full" if device.is_cuda else "no CUDA GPU: timings would time the interpreter"
        for metric in GPU_METRICS:
            res.skip(metric, reason)
        res.ncu_reason = "no CUDA GPU on this machine"
        res.notes.append("CPU run: the Triton kernels ran in the interpreter at small shapes (correctness only).")
        return res
    copy_gbps = measured_peaks(device).copy_gbps
    impls = {"framework": load_impl("framework"), "solution": load_impl("solution")}
    impls.setdefault(impl, candidate)
    bench_decode(res, impls, impl, dtype, copy_gbps)
    bench_prefill(res, impls, impl, dtype)
    flashinfer = bench_flashinfer(res, impls[impl], dtype)
    bench_sweeps(res, impls, impl, dtype, copy_gbps, flashinfer)
    res.notes.append("Decode bytes are counted (K and V of every token once, q read, out written); the PyTorch "
                     "baseline also copies the gathered pages, which is why it cannot approach the copy bandwidth.")
    return res
