"""Measurements behind the engine's comparison table: one ``Row`` per version of the engine or peer.

Every row is measured on the same model, weights and requests, in one process:

- **latency** — bs=1 decode ms/token: one request of ``prompt`` random tokens, (time of ``n`` new tokens −
  time of 1) / (n − 1), prefill and first token taken out (phase 0's ``measure_generate``); MBU = bytes a
  step must read (weights + KV) / that time / measured copy bandwidth;
- **throughput** — new tokens / wall time of an offline workload (phase 4's ``Workload``: 50 % short / 50 %
  long outputs, ``ignore_eos``). Engines without batching serve the requests one after another; they run
  a slice of the same mix (``subset``), which measures the same rate in less time;
- **GPU busy** — union of GPU activity / wall time under the profiler (module 0's trace);
- **KV utilisation** — live token slots / reserved KV slots (``LLMEngine.last_run``);
- **ITL p50** (batched rows) — inter-token latency of concurrent streams through phase 4's ``EngineLoop``
  (``bench_int4``: E.2 compares the INT4 row's with the bf16 batched row's).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from module0_profiling.timing import time_region
from phase0_prototype.bench import measure_generate, random_prompt
from phase4_scheduler.loadgen import Workload


@dataclass
class Row:
    name: str
    link: str  # the phase directory the row's contribution lives in
    throughput: float | None = None  # tok/s on the offline workload (or its subset)
    throughput_note: str = ""
    decode_s: float | None = None  # bs=1 decode seconds per token
    e2e_tok_s: float | None = None  # bs=1 end to end (prefill included)
    mbu: float | None = None
    gpu_busy: float | None = None
    kv_utilisation: float | None = None
    itl_p50: float | None = None  # seconds between consecutive tokens of a stream, p50 (batched rows)
    skip: str = ""  # why the row was not measured
    mode: str = ""
    bytes_per_token: float | None = None  # bytes a decode step reads, when not the float model's (INT4)


def workload_requests(tokenizer, workload: Workload) -> tuple[list[list[int]], list[int]]:
    reqs = workload.requests()
    return [tokenizer.encode(p) for _, _, p in reqs], [n for _, n, _ in reqs]


def release() -> None:
    """After the caller dropped its engine: return the memory, so the next row has the GPU to itself."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def engine_latency(engine, prompt: torch.Tensor, n_new: int, repeats: int) -> dict:
    ids = prompt[0].tolist()
    return measure_generate(lambda k: engine.generate([ids], max_tokens=k, ignore_eos=True), n_new, repeats)


def engine_throughput(engine, prompts: list[list[int]], lengths: list[int], *,
                      warmup: int = 0) -> tuple[float, float | None]:
    """(tok/s, KV utilisation) of one offline run of every request, after ``warmup`` untimed runs."""
    t = time_region(lambda: engine.generate(prompts, max_tokens=lengths, ignore_eos=True), repeats=1, warmup=warmup)
    return sum(lengths) / t.median, engine.last_run.kv_utilisation


def gpu_busy(fn) -> float | None:
    if not torch.cuda.is_available():
        return None
    from module0_profiling.trace import profile_region

    return profile_region(fn, iters=1, warmup=0).gpu_busy


def hf_rows(model, prompt: torch.Tensor, n_new: int, prompts, lengths, workload: Workload, *, on_gpu: bool,
            repeats: int, progress=lambda message: None) -> list[Row]:
    """HF transformers on the same weights: dynamic cache, static cache (GPU), ``generate_batch`` (GPU).

    ``generate_batch`` runs first (E.1 needs it) and the static cache last: its compilation is the
    slowest part of the whole benchmark (one per prompt shape)."""
    from phase0_prototype import hf_peer

    reason = hf_peer.missing_reason()
    names = ["HF transformers, dynamic cache", "HF transformers, static cache (compiled)", "HF transformers generate_batch"]
    if reason:
        return [Row(n, "phase0_prototype", skip=reason) for n in names]
    batch = Row(names[2], "phase4_scheduler", mode="paged, continuous batching")
    if on_gpu:
        from phase4_scheduler.bench import _hf_generate_batch

        progress(names[2])
        seconds, why = _hf_generate_batch(model, workload)  # builds (and frees) its own copy of the model
        release()
        batch.skip = why if seconds is None else ""
        if seconds is not None:
            tokens = sum(n for _, n, _ in workload.requests())
            batch.throughput, batch.throughput_note = tokens / seconds, f"{workload.num_requests} requests"
    progress(names[0])
    hf = hf_peer.build_hf(model)
    dynamic = Row(names[0], "phase0_prototype", mode="bs=1, cache grows by concatenation")
    f = measure_generate(lambda k: hf_peer.hf_generate(hf, prompt, k), n_new, repeats)
    dynamic.decode_s, dynamic.e2e_tok_s = f["decode_s_per_token"], f["e2e_tok_s"]
    t = time_region(lambda: [hf_peer.hf_generate(hf, torch.tensor([p], device=model.device), n)
                             for p, n in zip(prompts, lengths, strict=True)], repeats=1, warmup=0)
    dynamic.throughput, dynamic.throughput_note = sum(lengths) / t.median, f"{len(prompts)} requests one at a time"
    static = Row(names[1], "phase0_prototype", mode="bs=1, preallocated cache, decode compiled by transformers")
    if on_gpu:
        progress(names[1])
        f = measure_generate(lambda k: hf_peer.hf_generate(hf, prompt, k, static_cache=True), n_new, 1)
        static.decode_s, static.e2e_tok_s = f["decode_s_per_token"], f["e2e_tok_s"]
        static.throughput_note = "not measured: every new prompt length recompiles (minutes)"
    else:
        why = "a GPU peer: compiled static cache and generate_batch are measured on a CUDA GPU only"
        static.skip = batch.skip = why
    return [dynamic, static, batch]  # the caller's release() frees the model once this frame is gone


def tp_row(spec: str, dtype: str, prompt_len: int, *, gpus: int) -> Row:
    """TP=2 on two GPUs: phase 6's decode-step sweep (batch 1 and 64) on two spawned NCCL ranks."""
    row = Row("TP=2 (phase 6)", "phase6_tensor_parallel")
    if gpus < 2:
        row.skip = f"needs 2 CUDA GPUs (nvidia-h200-x2); this machine has {gpus}"
        return row
    from phase6_tensor_parallel.dist_env import spawn
    from phase6_tensor_parallel.throughput import sweep_rank

    out = spawn(sweep_rank, 2, "solution", spec, dtype, "cuda", [1, 64], prompt_len, 20, device="cuda", timeout_s=600)[0]
    row.decode_s = out["step_s"][0]
    row.throughput, row.throughput_note = 64 / out["step_s"][1], "static batch of 64 decodes (phase 6 sweep)"
    row.mode = "Megatron layers, KV heads split, comm overlapped; no CUDA graphs"
    return row


def cli_bench(args, config) -> int:
    """``titaninfer bench``: the engine alone — offline throughput and bs=1 decode latency."""
    from .engine import LLMEngine

    engine = LLMEngine(config)
    engine.warmup()
    w = Workload(args.num_requests, args.short_tokens, args.long_tokens)
    prompts, lengths = workload_requests(engine.tokenizer, w)
    print(f"[bench] {config.model} on {engine.device.type}: {args.num_requests} requests "
          f"({args.short_tokens}/{args.long_tokens} new tokens) …", flush=True)
    engine.generate(prompts[:2], max_tokens=[2, 2], ignore_eos=True)  # first-call costs outside the timing
    tok_s, kv = engine_throughput(engine, prompts, lengths)
    path = engine.last_run.path
    prompt = random_prompt(args.prompt_tokens, engine.model.config.vocab_size, engine.device)
    lat = engine_latency(engine, prompt, args.new_tokens, repeats=2)
    print(f"| measure | value |\n|---|---|\n| offline throughput | {tok_s:.1f} tok/s ({path}) |\n"
          f"| KV utilisation | {'—' if kv is None else f'{100 * kv:.0f} %'} |\n"
          f"| bs=1 decode | {lat['decode_s_per_token'] * 1e3:.2f} ms/token ({lat['decode_tok_s']:.1f} tok/s; "
          f"prompt {args.prompt_tokens}, {args.new_tokens} new) |\n"
          f"| bs=1 end to end | {lat['e2e_tok_s']:.1f} tok/s |")
    print(f"[bench] engine: {engine.path_name()}; the full comparison: make check-engine")
    return 0


def now() -> str:
    return time.strftime("%H:%M:%S")
