"""Phase 0 measurements for P0.1–P0.5 and P0.7, all in one process (``module0_profiling.targets`` contract).

``size="full"`` (GPU): ``random:tinyllama`` in bf16, batch 1, prompt 512, 128 new tokens — the no-KV-cache
framework, the implementation under test eager and compiled, the PyTorch step under torch.compile + CUDA
graph (P0.3), HF transformers' static-cache generate (compiled by transformers) as the peer; the eager
cache against no cache over a sweep of contexts (P0.2's crossover); P0.1 in fp32; the CUDA basics at
4096²; speculative decoding on the bundled trained model (P0.7). ``size="small"`` (CPU, seconds):
``random:tiny`` with short lengths; P0.1 is measured, the speed targets (defined on a GPU) are SKIP with
the reason and their CPU figures are in the tables.

Decode speed = (time of ``generate(n)`` − time of ``generate(1)``) / (n − 1): the prompt and the first
token are taken out, so the figure is the steady per-token cost MBU is about.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from module0_profiling.timing import Timing, time_fn, time_graph, time_region
from phase0_prototype import hf_peer, load_impl, load_model
from phase0_prototype.weights import decode_bytes_per_token

SHAPES = {
    "full": dict(model="random:tinyllama", prompt=512, new=128, parity_prompt=32, repeats=7,
                 contexts=(256, 512, 1024, 2048, 4096, 8192), spec_new=128),
    "small": dict(model="random:tiny", prompt=64, new=32, parity_prompt=16, repeats=2,
                  contexts=(16, 64, 256, 1024), spec_new=48),
}
SWEEP_NEW = 8  # tokens per generate in the context sweep: the framework pays a whole forward for each
INDUCTOR_ROW = "solution PyTorch step, torch.compile + CUDA graph"
SPEED_METRICS = ("p0_2_long_context_speedup", "p0_2_crossover_tokens", "p0_2_kv_cache_speedup",
                 "p0_3_compile_speedup", "p0_3_triton_step_speedup", "p0_4_decode_mbu", "p0_4_vs_hf_static")
SPECULATIVE_MODEL = "kjv-llama-18m"  # P0.7 needs a trained model: a random one predicts nothing drafts can
SPECULATIVE_K = 8  # drafts per verify: at batch 1 a forward of 9 positions costs about what one of 1 does
PARITY_TOKENS = 64


def random_prompt(n: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, vocab, (1, n - 1), generator=g)
    return torch.cat([torch.ones(1, 1, dtype=torch.long), body], 1).to(device)


def step_inputs(config, device, batch: int = 1, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random inputs of one decode step's projections, for timing them apart (GPU scripts): ``x`` (the
    residual stream: qkv's and gate_up's input), ``attn`` (o's), ``act`` (down's), ``res`` (a residual) and
    ``qkv`` (attention's)."""
    c = config
    shapes = dict(x=c.hidden_size, attn=c.num_attention_heads * c.head_dim, act=c.intermediate_size,
                  res=c.hidden_size, qkv=c.q_size + 2 * c.kv_size)
    return {name: torch.randn(batch, n, device=device, dtype=dtype) for name, n in shapes.items()}


def progress(message: str) -> None:
    """One line per stage on stderr: a full run compiles three times and takes minutes."""
    print(f"[phase0 bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_generate(generate, n_new: int, repeats: int) -> dict:
    """``generate(k)`` runs a k-token continuation; returns end-to-end and steady decode figures.

    Decode time per token = (time of an ``n_new``-token run − time of a 1-token run) / (n_new − 1), each
    pair run back to back and the median taken over the pairs: the prefill's own jitter and any drift of the
    GPU's clocks cancel within a pair instead of landing, divided by n_new, on the per-token figure.
    """
    full = time_region(lambda: generate(n_new), repeats=1, warmup=1)
    first = time_region(lambda: generate(1), repeats=1, warmup=1)
    fulls, firsts = list(full.samples), list(first.samples)
    for _ in range(repeats - 1):
        fulls += time_region(lambda: generate(n_new), repeats=1, warmup=0).samples
        firsts += time_region(lambda: generate(1), repeats=1, warmup=0).samples
    diffs = sorted(f - s for f, s in zip(fulls, firsts, strict=True))
    decode_s = max(diffs[len(diffs) // 2], 1e-12) / (n_new - 1)
    e2e, prefill = sorted(fulls)[len(fulls) // 2], sorted(firsts)[len(firsts) // 2]
    return {"e2e_s": e2e, "e2e_tok_s": n_new / e2e, "prefill_s": prefill,
            "decode_s_per_token": decode_s, "decode_tok_s": 1.0 / decode_s}


def generate_speed(engine, prompt, n_new: int, repeats: int) -> dict:
    """``measure_generate`` of ``engine.generate`` (EOS ignored) continuing ``prompt``."""
    return measure_generate(lambda k: engine.generate(prompt, k, stop_on_eos=False), n_new, repeats)


def graph_us(fn) -> float:
    """µs per call of ``fn`` captured in a CUDA graph (module0's ``time_graph``), best of 3 samples of 50
    (GPU scripts timing one projection or a chain of them)."""
    with torch.inference_mode():
        return time_graph(fn).best * 1e6


def decode_replay(engine, position: int, reps: int = 100, trials: int = 3) -> Timing:
    """Seconds per replay of a compiled engine's batch-1 decode-step graph at ``position`` (``trials``
    samples of ``reps`` replays back to back; each replay advances the position, saturating at the cache's
    last slot)."""
    g = engine._graph_for(1)
    g.position_in.fill_(position)
    return time_fn(g.graph.replay, warmup=1, iters=trials, calls_per_sample=reps, device="cuda")


def greedy_parity(impl: str, shapes: dict, device: str, result: BenchResult) -> None:
    """P0.1: the implementation's greedy tokens vs HF's on the same fp32 weights, eager and compiled."""
    reason = hf_peer.missing_reason()
    if reason:
        result.skip("p0_1_greedy_identical", reason)
        return
    progress("P0.1 greedy parity in fp32")
    model = load_model(shapes["model"], dtype="fp32", device=device, seed=1)
    prompt = random_prompt(shapes["parity_prompt"], model.config.vocab_size, device, seed=1)
    expected = hf_peer.hf_generate(hf_peer.build_hf(model), prompt, PARITY_TOKENS)[0].cpu()
    matched = []
    modes = [False, True] if device == "cuda" else [False]
    for compile in modes:
        engine = load_impl(impl).build(model, max_seq_len=shapes["parity_prompt"] + PARITY_TOKENS,
                                       compile=compile)
        got = engine.generate(prompt, PARITY_TOKENS, stop_on_eos=False).tokens[0]
        same = (got == expected).int()
        prefix = PARITY_TOKENS if bool(same.all()) else int(same.argmin())
        matched.append(prefix)
        result.notes.append(f"P0.1 {impl} ({engine.mode}, fp32): first {prefix}/{PARITY_TOKENS} greedy "
                            "tokens equal HF's")
        del engine
    result.metrics["p0_1_greedy_identical"] = float(min(matched) == PARITY_TOKENS)
    result.metrics["p0_1_tokens_matched"] = float(min(matched))
    del model
    torch.cuda.empty_cache() if device == "cuda" else None


def engine_speed(impl: str, model, prompt: torch.Tensor, shapes: dict,
                 compile: bool) -> tuple[dict, str, object]:
    progress(f"{impl} compile={compile}")
    engine = load_impl(impl).build(model, max_seq_len=prompt.shape[1] + shapes["new"], compile=compile)
    if hasattr(engine, "warmup"):
        engine.warmup()
    return generate_speed(engine, prompt, shapes["new"], shapes["repeats"]), engine.mode, engine


def inductor_speed(model, prompt: torch.Tensor, shapes: dict) -> dict:
    """P0.3's torch.compile row: the solution's PyTorch decode step compiled by inductor and captured in a
    CUDA graph (``dev.InductorStepEngine``), freed before the Triton step is captured."""
    from phase0_prototype.dev import InductorStepEngine

    progress("solution PyTorch step under torch.compile + CUDA graph")
    engine = InductorStepEngine(model, max_seq_len=prompt.shape[1] + shapes["new"], compile=True)
    engine.warmup()
    figures = generate_speed(engine, prompt, shapes["new"], shapes["repeats"])
    del engine
    torch.cuda.empty_cache()
    return figures


def context_sweep(impl: str, model, shapes: dict) -> list[tuple[int, float, float]]:
    """P0.2's crossover: ``(context, no-cache s/token, eager-cache s/token)`` at each of ``shapes["contexts"]``,
    both engines eager, decode time per token by ``measure_generate`` over ``SWEEP_NEW`` tokens.

    The sweep runs past TinyLlama's 2048 positions (on an H100 the eager cache is launch-bound and is expected
    to win only beyond them): the model is random, so raising the position limit changes no speed, only the
    RoPE table's length. Each engine is built for its context, so the cache scores no extra slots.
    """
    need = shapes["contexts"][-1] + SWEEP_NEW
    if need > model.config.max_position_embeddings:
        model = replace(model, config=model.config.with_(max_position_embeddings=need))
    rows = []
    for context in shapes["contexts"]:
        progress(f"P0.2 sweep: context {context}")
        prompt = random_prompt(context, model.config.vocab_size, model.device, seed=context)
        per_token = []
        for name in ("framework", impl):
            engine = load_impl(name).build(model, max_seq_len=context + SWEEP_NEW, compile=False)
            per_token.append(generate_speed(engine, prompt, SWEEP_NEW, min(shapes["repeats"], 3))
                             ["decode_s_per_token"])
        rows.append((context, per_token[0], per_token[1]))
    return rows


def sweep_table(rows: list[tuple[int, float, float]]) -> str:
    lines = ["| context (tokens) | no cache ms/token | eager KV cache ms/token | cache speed-up |",
             "|---|---|---|---|"]
    lines += [f"| {c} | {fw * 1e3:.3f} | {cached * 1e3:.3f} | {fw / cached:.2f}× |" for c, fw, cached in rows]
    return "\n".join(lines)


def hf_speed(model, prompt: torch.Tensor, shapes: dict, static: bool) -> dict:
    progress(f"HF transformers static_cache={static}")
    hf = hf_peer.build_hf(model)
    figures = measure_generate(lambda k: hf_peer.hf_generate(hf, prompt, k, static_cache=static),
                               shapes["new"], shapes["repeats"])
    return figures  # the HF model is freed on return (only the lambda above held it)


def run(impl: str, size: str) -> BenchResult:
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # random:tiny on a CPU: extra threads only add synchronisation and noise
    try:
        return _run(impl, size)
    finally:
        torch.set_num_threads(threads)


def _run(impl: str, size: str) -> BenchResult:
    device_info = detect_device()
    on_gpu = device_info.is_cuda
    if size == "full" and not on_gpu:
        raise SystemExit("SIZE=full needs a CUDA GPU (TinyLlama shapes); use SIZE=small on a CPU")
    shapes = SHAPES[size]
    device = "cuda" if on_gpu else "cpu"
    dtype = "bf16" if on_gpu else "fp32"
    result = BenchResult()
    result.context = {"model": shapes["model"], "dtype": dtype, "batch": 1, "prompt_tokens": shapes["prompt"],
                      "new_tokens": shapes["new"], "impl": impl, "device": device_info.name}
    greedy_parity(impl, shapes, device, result)

    model = load_model(shapes["model"], dtype=dtype, device=device, seed=0)
    cfg = model.config
    prompt = random_prompt(shapes["prompt"], cfg.vocab_size, device)
    context = shapes["prompt"] + shapes["new"] // 2
    bytes_per_token = decode_bytes_per_token(cfg, model.dtype, context)
    flops_per_token = 2.0 * (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size)
    peaks = measured_peaks(device_info)
    result.context.update(bytes_per_token=bytes_per_token, copy_gbps=peaks.copy_gbps)

    runs: dict[str, dict] = {}
    runs["framework (no KV cache)"], _, _ = engine_speed("framework", model, prompt, shapes, compile=False)
    runs[f"{impl} eager"], eager_mode, _ = engine_speed(impl, model, prompt, shapes, compile=False)
    reason = hf_peer.missing_reason()
    if reason is None:  # HF runs first: its compiled graphs are freed before ours are captured
        runs["HF transformers, dynamic cache"] = hf_speed(model, prompt, shapes, static=False)
        if on_gpu:
            runs["HF transformers, static cache (compiled)"] = hf_speed(model, prompt, shapes, static=True)
    compiled_engine = None
    if on_gpu:
        if impl == "solution":  # P0.3: torch.compile's own gain, before the hand-written kernels
            runs[INDUCTOR_ROW] = inductor_speed(model, prompt, shapes)
        runs[f"{impl} compiled"], compiled_mode, compiled_engine = engine_speed(impl, model, prompt, shapes,
                                                                                compile=True)

    for name, f in runs.items():
        result.comparisons.append(Comparison(name, f["decode_s_per_token"], work_bytes=bytes_per_token,
                                             work_flops=flops_per_token,
                                             note=f"{f['e2e_tok_s']:.1f} tok/s end to end, "
                                                  f"prefill+1 {f['prefill_s'] * 1e3:.1f} ms"))
        result.roofline.append(RooflinePoint(f"decode: {name}", flops_per_token, bytes_per_token,
                                             f["decode_s_per_token"]))
    result.tables["Generation speed (batch 1)"] = speed_table(runs, bytes_per_token, peaks.copy_gbps)

    base = runs["framework (no KV cache)"]
    eager = runs[f"{impl} eager"]
    sweep = context_sweep(impl, model, shapes)
    result.tables["Eager KV cache vs no cache by context (batch 1, per decode token)"] = sweep_table(sweep)
    crossover = next((c for c, fw, cached in sweep if cached < fw), 0)
    longest, fw_long, cached_long = sweep[-1]
    result.notes.append(f"P0.2 {impl} eager: the KV cache starts to win at "
                        + (f"{crossover} tokens of context" if crossover else f"no context ≤ {longest}")
                        + f"; {fw_long / cached_long:.2f}× at {longest}; "
                        f"{eager['e2e_tok_s'] / base['e2e_tok_s']:.2f}× end to end at prompt {shapes['prompt']}")
    if on_gpu and size == "full":
        best = runs[f"{impl} compiled"]
        compiled_step = runs.get(INDUCTOR_ROW, best)  # another module: its own compile=True is its step 4
        result.metrics["p0_2_long_context_speedup"] = fw_long / cached_long
        result.metrics["p0_2_crossover_tokens"] = float(crossover)
        result.metrics["p0_2_kv_cache_speedup"] = eager["e2e_tok_s"] / base["e2e_tok_s"]
        result.metrics["p0_3_compile_speedup"] = compiled_step["decode_tok_s"] / eager["decode_tok_s"]
        result.metrics["p0_3_triton_step_speedup"] = best["decode_tok_s"] / eager["decode_tok_s"]
        result.metrics["p0_4_decode_mbu"] = bytes_per_token * best["decode_tok_s"] / (peaks.copy_gbps * 1e9)
        hf_static = runs.get("HF transformers, static cache (compiled)")
        if hf_static:
            result.metrics["p0_4_vs_hf_static"] = best["decode_tok_s"] / hf_static["decode_tok_s"]
        else:
            result.skip("p0_4_vs_hf_static", reason or "HF static-cache run missing")
        result.notes.append(f"{impl}: eager = {eager_mode}; compiled = {compiled_mode}"
                            + ("" if INDUCTOR_ROW in runs else
                               "; P0.3's torch.compile figure is this module's compile=True engine"))
    else:
        why = ("SIZE=small: the speed targets are defined at TinyLlama shapes on a GPU; CPU figures are in "
               "the tables"
               if not on_gpu else "SIZE=small: the speed targets are defined at TinyLlama shapes (SIZE=full)")
        for m in SPEED_METRICS:
            result.skip(m, why)

    trace_engine = compiled_engine or load_impl(impl).build(
        model, max_seq_len=prompt.shape[1] + shapes["new"], compile=False)
    trace_decode(result, trace_engine, prompt)
    ncu_kernels(result, impl, size)
    cuda_basics_metrics(result, size)
    speculative_metrics(result, impl, size, device, dtype)
    return result


def speed_table(runs: dict, bytes_per_token: float, copy_gbps: float) -> str:
    lines = ["| version | decode tok/s | ms/token | achieved GB/s | % of copy BW | end-to-end tok/s |",
             "|---|---|---|---|---|---|"]
    for name, f in runs.items():
        gbps = bytes_per_token * f["decode_tok_s"] / 1e9
        lines.append(f"| {name} | {f['decode_tok_s']:.1f} | {f['decode_s_per_token'] * 1e3:.3f} | "
                     f"{gbps:.1f} | "
                     f"{100 * gbps / copy_gbps:.1f} % | {f['e2e_tok_s']:.1f} |")
    return "\n".join(lines)


def trace_decode(result: BenchResult, engine, prompt: torch.Tensor) -> None:
    try:
        from module0_profiling.trace import profile_region
    except ImportError as e:
        result.notes.append(f"trace unavailable: {e}")
        return
    n = 32
    result.trace = profile_region(lambda: engine.generate(prompt, n, stop_on_eos=False), iters=1, warmup=1)
    result.trace_region = (f"{engine.name} ({engine.mode}): prefill of {prompt.shape[1]} tokens + {n - 1} "
                           "decode steps")


NCU_SNIPPET = """
import torch
from phase0_prototype import cuda_basics, load_impl, load_model
from phase0_prototype.solution import SolutionEngine
x = torch.randn(1 << 24, device="cuda"); y = torch.empty_like(x)
a, b = torch.randn(1024, 1024, device="cuda"), torch.randn(1024, 1024, device="cuda")
engine = load_impl({impl!r}).build(load_model("random:tinyllama", dtype="bf16", device="cuda"), compile=True)
step = None
if isinstance(engine, SolutionEngine):  # the fused decode step; another engine is profiled by its trace only
    engine.prefill(torch.randint(3, 32000, (1, 512), device="cuda"))
    step, token, pos = engine._step_for(1), torch.tensor([5], device="cuda"), torch.tensor([512], device="cuda")
    step(token, pos)
torch.cuda.synchronize()
with torch.cuda.nvtx.range("titaninfer"):
    cuda_basics.copy(x, y); cuda_basics.copy(x, y, stride=32)
    for version in ("naive", "tiled_8", "tiled_16", "tiled_32"):
        cuda_basics.matmul(a, b, version)
    if step is not None:
        step(token, pos)
torch.cuda.synchronize()
"""


def ncu_kernels(result: BenchResult, impl: str, size: str) -> None:
    """Nsight Compute on the lesson's kernels: coalesced vs stride-32 copy (global-load sectors), naive vs
    tiled matmul (DRAM bytes, achieved occupancy per tile), then the first layer of the decode step."""
    from module0_profiling.trace import ncu_section

    if size != "full":
        result.ncu_reason = "SIZE=small: ncu profiles TinyLlama's decode step and the CUDA basics (SIZE=full, a GPU)"
        return
    ncu_section(result, NCU_SNIPPET.format(impl=impl), launch_count=14)


def cuda_basics_metrics(result: BenchResult, size: str) -> None:
    from phase0_prototype import cuda_basics

    reason = cuda_basics.available()
    if reason:
        for m in ("p0_5_tiled_vs_naive", "p0_5_coalesced_vs_strided"):
            result.skip(m, f"CUDA basics {reason}")
        return
    from phase0_prototype.cuda_basics.measure import measure

    progress("CUDA basics")
    figures = measure(4096 if size == "full" else 1024)
    result.metrics["p0_5_tiled_vs_naive"] = figures["tiled_vs_naive"]
    result.metrics["p0_5_coalesced_vs_strided"] = figures["coalesced_vs_strided"]
    result.tables["CUDA basics"] = figures["table"]
    result.tables["Occupancy (theoretical, CUDA occupancy API)"] = figures["occupancy_table"]
    result.roofline.extend(figures["roofline"])
    result.notes.extend(figures["notes"])


def edit_prompt(model, passage_tokens: int) -> list[int]:
    """P0.7's lookup-friendly prompt: a held-out passage of the bundled model's text, then its opening words
    again — the model is to go on from there, as when editing a given text."""
    ids = model.tokenizer.encode((model.path / "heldout.txt").read_text()[:20_000])
    return ids[:passage_tokens] + ids[1:9]


def speculative_speed(device: str, dtype: str, new: int, repeats: int, impl: str = "solution") -> dict:
    """P0.7: plain vs speculative greedy decode tok/s (``measure_generate``) of ``impl``'s compiled engine on
    ``SPECULATIVE_MODEL``, an editing prompt and random tokens; ``None`` figures when ``impl`` does not
    build a ``SolutionEngine`` (the decoder drives its cache and graphs)."""
    from phase0_prototype.solution import SolutionEngine
    from phase0_prototype.speculative import SpeculativeDecoder

    model = load_model(SPECULATIVE_MODEL, dtype=dtype, device=device)
    engine = load_impl(impl).build(model, compile=True)
    if not isinstance(engine, SolutionEngine):
        return {}
    passage = model.config.max_position_embeddings - new - SPECULATIVE_K - 16
    prompts = {"edit": edit_prompt(model, min(passage, 256)),
               "random": random_prompt(264, model.config.vocab_size, device, seed=7)[0].tolist()}
    decoder = SpeculativeDecoder(engine, SPECULATIVE_K)
    engine.warmup()
    decoder.warmup()
    figures = {}
    for name, prompt in prompts.items():
        progress(f"P0.7 speculative decoding: {name} prompt")
        plain, fast = (generate_speed(x, prompt, new, repeats) for x in (engine, decoder))
        same = torch.equal(decoder.generate(prompt, new, stop_on_eos=False).tokens,
                           engine.generate(prompt, new, stop_on_eos=False).tokens)
        figures[name] = dict(plain=plain["decode_tok_s"], speculative=fast["decode_tok_s"],
                             stats=decoder.stats, same=same)  # stats of the last speculative run
    return figures


def speculative_metrics(result: BenchResult, impl: str, size: str, device: str, dtype: str) -> None:
    shapes = SHAPES[size]
    figures = speculative_speed(device, dtype, shapes["spec_new"], min(shapes["repeats"], 3), impl)
    names = ("p0_7_lookup_speedup", "p0_7_random_speedup", "p0_7_lookup_acceptance")
    if not figures:
        for m in names:
            result.skip(m, f"speculative.SpeculativeDecoder drives a SolutionEngine; {impl} builds another engine")
        return
    lines = ["| prompt | plain tok/s | speculative tok/s | speed-up | drafts accepted | tokens per verify | "
             "plain tokens | same tokens |", "|---|---|---|---|---|---|---|---|"]
    for name, f in figures.items():
        s = f["stats"]
        per_verify = (s.accepted + s.verifies) / s.verifies if s.verifies else 0.0
        lines.append(f"| {name} | {f['plain']:.1f} | {f['speculative']:.1f} | {f['speculative'] / f['plain']:.2f}× | "
                     f"{100 * s.acceptance:.1f} % of {s.drafted} | {per_verify:.2f} | {s.plain_tokens} | "
                     f"{f['same']} |")
    result.tables[f"Speculative decoding, prompt lookup, k = {SPECULATIVE_K} ({SPECULATIVE_MODEL}, "
                  f"{shapes['spec_new']} new tokens)"] = "\n".join(lines)
    if device == "cuda" and size == "full":
        result.metrics["p0_7_lookup_speedup"] = figures["edit"]["speculative"] / figures["edit"]["plain"]
        result.metrics["p0_7_random_speedup"] = figures["random"]["speculative"] / figures["random"]["plain"]
        result.metrics["p0_7_lookup_acceptance"] = figures["edit"]["stats"].acceptance
    else:
        for m in names:
            result.skip(m, "SIZE=small: P0.7 is defined on a GPU (graphs); CPU figures are in the tables")
