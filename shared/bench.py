"""The end-to-end benchmark (E.1, E.2): the engine phase by phase, beside HF transformers, in one process.

Rows, each measured on the same weights and requests (``bench_rows`` says how each column is measured):
phase 0 framework → phase 0 solution → + paged KV & continuous batching (phases 1, 3, 4: the assembled
engine) → + INT4 (phase 5) → TP=2 (phase 6), and HF transformers with a dynamic cache, a static cache
(compiled) and ``generate_batch`` (paged continuous batching). A row that cannot run here is SKIP with
its reason. ``impl`` picks the engine under test (``shared.solution``/``shared.framework``/a module with
``IMPLS``); E.1 is measured on it. E.2 sets the INT4 row against the bf16 batched row (``bench_int4``):
offline throughput, and inter-token latency p50 at ``streams`` concurrent streams. The tested engine's
offline workload is also set against its roofline (phase 4's ``step_roofline``, as P4.9): reported, not judged.

size "full" (CUDA): ``random:tinyllama`` bf16; bs=1 at prompt 512 + 128 new tokens (as P0.4); offline
workload = P4.1's (512 requests, 50 % 10 / 50 % 200 new tokens), 16 streams of 128 tokens. size "small"
(CPU, < 2 min): ``random:tiny`` fp32, prompt 64 + 32, 16 requests, 8 streams; the E.1 and E.2 metrics
(TinyLlama shapes on a GPU) SKIP.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

from module0_profiling.check import ROOT, report_stem
from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.roofline import Ceiling
from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from phase0_prototype.bench import measure_generate, random_prompt
from phase0_prototype.sources import load_model
from phase0_prototype.weights import decode_bytes_per_token
from phase4_scheduler import step_roofline
from phase4_scheduler.loadgen import Workload

from . import impls as impl_spec
from .bench_int4 import e2_metrics, e2_table, itl_p50, stream_arrivals
from .bench_rows import (
    Row,
    engine_latency,
    engine_throughput,
    gpu_busy,
    hf_rows,
    now,
    release,
    tp_row,
    workload_requests,
)
from .bench_table import comparison_table, path_table, plot_rows
from .engine import EngineConfig, LLMEngine

SIZES = {
    "full": dict(model="random:tinyllama", dtype="bf16", prompt=512, new=128, repeats=3, slow_repeats=1,
                 requests=512, short=10, long=200, subset=4, seqs=256, budget=2048,
                 trace_requests=128, trace_long=64, streams=16),
    "small": dict(model="random:tiny", dtype="fp32", prompt=64, new=32, repeats=2, slow_repeats=1,
                  requests=16, short=8, long=32, subset=4, seqs=8, budget=128,
                  trace_requests=8, trace_long=16, streams=8),
}
E1_GPU_ONLY = "E.1 is defined at TinyLlama shapes on a CUDA GPU (SIZE=full); this run's figures are in the table"


def progress(message: str) -> None:
    print(f"[engine bench {now()}] {message}", file=sys.stderr, flush=True)


class Context:
    """What every row shares: model, prompts, workloads, peaks, bytes per token."""

    def __init__(self, size: str):
        info = detect_device()
        self.on_gpu = info.is_cuda
        if size == "full" and not self.on_gpu:
            raise SystemExit("SIZE=full needs a CUDA GPU (TinyLlama shapes); use SIZE=small on a CPU")
        self.size, self.s, self.device_info = size, SIZES[size], info
        self.device = "cuda" if self.on_gpu else "cpu"
        self.peaks = measured_peaks(info)
        self.model = load_model(self.s["model"], dtype=self.s["dtype"], device=self.device, seed=0)
        cfg = self.model.config
        self.prompt = random_prompt(self.s["prompt"], cfg.vocab_size, self.device)
        self.bytes_per_token = decode_bytes_per_token(cfg, self.model.dtype, self.s["prompt"] + self.s["new"] // 2)
        self.flops_per_token = 2.0 * (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size)
        self.workload = Workload(self.s["requests"], self.s["short"], self.s["long"])
        self.prompts, self.lengths = workload_requests(self.model.tokenizer, self.workload)
        subset = Workload(self.s["subset"], self.s["short"], self.s["long"], seed=1)
        self.sub_prompts, self.sub_lengths = workload_requests(self.model.tokenizer, subset)
        trace = Workload(self.s["trace_requests"], self.s["short"], self.s["trace_long"], seed=2)
        self.trace_prompts, self.trace_lengths = workload_requests(self.model.tokenizer, trace)
        # A context just long enough for every request: the static cache's attention and the KV pool
        # are sized by it (fewer masked positions per decode step, a smaller pool).
        need = max([self.s["prompt"] + self.s["new"]] + [len(p) + n for p, n in zip(
            self.prompts + self.sub_prompts + self.trace_prompts, self.lengths + self.sub_lengths + self.trace_lengths, strict=True)])
        self.max_model_len = -(-need // 64) * 64

    def engine(self, spec, quant: str | None = None) -> LLMEngine:
        s = self.s
        return LLMEngine(EngineConfig(model=s["model"], impl=spec, quant=quant, quant_group_size=self.quant_group_size,
                                      max_model_len=self.max_model_len,
                                      max_num_seqs=s["seqs"], max_num_batched_tokens=s["budget"]), model=self.model)

    def mbu(self, decode_s: float, bytes_per_token: float | None = None) -> float | None:
        moved = bytes_per_token or self.bytes_per_token
        return moved / decode_s / (self.peaks.copy_gbps * 1e9) if self.on_gpu else None

    @property
    def quant_group_size(self) -> int:
        """128 (phase 5's default) when it divides every projection's input, else the largest that does."""
        cfg = self.model.config
        dims = (cfg.hidden_size, cfg.q_size, cfg.intermediate_size)
        return next((g for g in (128, 64, 32, 16, 8) if all(d % g == 0 for d in dims)), 128)

    def int4_bytes_per_token(self, quantized_projection_bytes: int) -> float:
        """The float count with the projections' bytes replaced by their INT4 codes + scales + zeros."""
        cfg, elem = self.model.config, self.model.dtype.itemsize
        h, i = cfg.hidden_size, cfg.intermediate_size
        per_layer = h * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * h + 3 * h * i
        return self.bytes_per_token - cfg.num_hidden_layers * per_layer * elem + quantized_projection_bytes


def measure_engine(ctx: Context, name: str, link: str, spec, *, quant: str | None = None, slow: bool = False,
                   result: BenchResult | None = None) -> Row:
    """One engine row; with ``result``, also the bs=1 yardstick (phase 0's engine) and the report's trace."""
    engine = ctx.engine(spec, quant)
    batched = engine.route() == "batched"
    engine.warmup()
    row = Row(name, link)
    row.bytes_per_token = ctx.int4_bytes_per_token(engine.quantized.linear_bytes()) if quant else None
    f = engine_latency(engine, ctx.prompt, ctx.s["new"], ctx.s["slow_repeats"] if slow else ctx.s["repeats"])
    row.decode_s, row.e2e_tok_s = f["decode_s_per_token"], f["e2e_tok_s"]
    row.mbu = ctx.mbu(row.decode_s, row.bytes_per_token) if (row.bytes_per_token or not quant) else None
    row.mode = engine.path_name()
    if batched:
        # one untimed run first: the kernels each step shape needs (prefill chunks, mixed steps: Triton
        # compiles per specialization, INT4's too) are built outside the timing
        row.throughput, row.kv_utilisation = engine_throughput(engine, ctx.prompts, ctx.lengths, warmup=1)
        row.throughput_note = f"{len(ctx.prompts)} requests, continuous batching"
        row.itl_p50 = itl_p50(stream_arrivals(engine.batched, ctx.prompts[:ctx.s["streams"]], ctx.s["new"]))
        region = partial(engine.generate, ctx.trace_prompts, max_tokens=ctx.trace_lengths, ignore_eos=True)
    else:
        row.throughput, row.kv_utilisation = engine_throughput(engine, ctx.sub_prompts, ctx.sub_lengths)
        row.throughput_note = f"{len(ctx.sub_prompts)} requests one at a time"
        region = partial(engine.generate, [ctx.prompt[0].tolist()], max_tokens=32, ignore_eos=True)
    if result is not None:
        bs1_yardstick(ctx, engine, f, result)
        if batched and not quant and engine.config.tp == 1:  # float weights on one device: the counted bytes
            offline_roofline(ctx, engine, result)
        from module0_profiling.trace import profile_region

        result.trace = profile_region(region, iters=1, warmup=0)
        result.trace_region = (f"{name}: " + (f"offline run of {len(ctx.trace_prompts)} requests" if batched
                                              else "one request, 32 new tokens"))
        row.gpu_busy = result.trace.gpu_busy
    else:
        row.gpu_busy = gpu_busy(region)
    del region, engine  # the partial held the engine too
    release()
    return row


def bs1_yardstick(ctx: Context, engine: LLMEngine, through_engine: dict, result: BenchResult) -> None:
    """The engine's bs=1 decode (phase 4's loop at batch 1) beside phase 0's engine called directly: the
    single-request engine whose fused step the loop runs, without scheduler, paged KV or text."""
    if engine.route() != "batched":
        return
    ids, n, repeats = ctx.prompt[0].tolist(), ctx.s["new"], ctx.s["repeats"]
    direct = measure_generate(lambda k: engine.single.generate(ids, k, stop_on_eos=False), n, repeats)
    loop, alone = through_engine["decode_s_per_token"], direct["decode_s_per_token"]
    result.tables["bs=1 decode: the engine's loop vs phase 0's engine"] = path_table(
        {"engine": loop, "phase0": alone}, ctx.mbu)
    result.notes.append(f"bs=1 decode: the engine (phase 4's loop, batch 1) {loop * 1e3:.3f} ms/token; phase 0's "
                        f"engine called directly {alone * 1e3:.3f} ms/token ({loop / alone:.2f}× its time)")


def offline_roofline(ctx: Context, engine: LLMEngine, result: BenchResult) -> None:
    """The offline workload once more under phase 4's step recorder: the sum of its steps' floors (measured
    peaks) over its wall time, as phase 4's P4.9 (``step_roofline``)."""
    ceiling = Ceiling("measured", ctx.peaks.matmul_tflops, ctx.peaks.copy_gbps)
    run = partial(engine.generate, ctx.prompts, max_tokens=ctx.lengths, ignore_eos=True)
    r = step_roofline.measure(engine.batched, run, ceiling, ctx.s["seqs"])
    if ctx.on_gpu:  # reported, not judged: the CPU's figure stays in the table
        result.metrics["engine_roofline_fraction"] = r.fraction
    result.tables["The offline workload against its roofline"] = step_roofline.table(
        r, f"{len(ctx.prompts)} requests, max_num_seqs {ctx.s['seqs']}", ctx.on_gpu)


def int4_row(ctx: Context) -> Row:
    """Phase 5's INT4 engine (RTN weights: the speed is the kernel's, whichever quantizer chose the codes)."""
    from phase0_prototype.errors import ModelError

    name, link = "+ INT4 weights (phase 5)", "phase5_quantization"
    try:
        return measure_engine(ctx, name, link, "solution", quant="rtn")
    except ModelError as e:
        return Row(name, link, skip=f"phase 5's INT4 engine cannot run this model: {e}")


def run(impl: str = "solution", size: str = "small", out_dir: Path | None = None) -> BenchResult:
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # tiny models on a CPU: extra threads only add noise
    try:
        return _run(impl, size, out_dir)
    finally:
        torch.set_num_threads(threads)


def _run(impl: str, size: str, out_dir: Path | None) -> BenchResult:
    under_test = impl_spec.parse(impl)  # a bad IMPL fails here, before minutes of measuring
    ctx = Context(size)
    s = ctx.s
    result = BenchResult(context={
        "model": s["model"], "dtype": s["dtype"], "device": ctx.device_info.name, "impl under test": impl,
        "impls": impl_spec.describe(impl_spec.resolve(under_test, ctx.device)),
        "bs=1 latency": f"one request, prompt {s['prompt']} random tokens, {s['new']} new tokens (decode time per token)",
        "offline workload": f"{s['requests']} requests, 50 % {s['short']} / 50 % {s['long']} new tokens, ignore_eos, greedy",
        "bytes per decode token": f"{ctx.bytes_per_token / 1e6:.1f} MB (weights + KV at context {s['prompt'] + s['new'] // 2})",
        "copy bandwidth": f"{ctx.peaks.copy_gbps:.0f} GB/s (measured)",
        "context per request": f"{ctx.max_model_len} positions (static cache length; KV pool of {s['seqs']} such requests)",
    })
    progress(f"{s['model']} {s['dtype']} on {ctx.device}, engine under test: {impl}")
    specs = {"phase 0 framework": ("phase0_prototype", "framework", True),
             "phase 0 solution": ("phase0_prototype", "solution,phase4=off", False),
             "+ paged KV & continuous batching (phases 1, 3, 4)": ("phase4_scheduler", "solution", False)}
    rows, tested = [], None
    for name, (link, spec, slow) in specs.items():
        progress(name)
        is_tested = impl_spec.parse(spec) == under_test
        rows.append(measure_engine(ctx, name, link, spec, slow=slow, result=result if is_tested else None))
        tested = rows[-1] if is_tested else tested
        progress(summary(rows[-1]))
    progress("+ INT4 (phase 5)")
    bf16, int4 = next(r for r in rows if r.link == "phase4_scheduler"), int4_row(ctx)
    rows.append(int4)
    progress(summary(int4))
    progress("TP=2 (phase 6)")
    gpus = torch.cuda.device_count() if ctx.on_gpu else 0
    rows.append(tp_row(s["model"], s["dtype"], s["prompt"], gpus=gpus))
    progress(summary(rows[-1]))
    if tested is None:
        progress(f"engine under test: {impl}")
        tested = measure_engine(ctx, f"engine under test ({impl})", "shared", impl, result=result)
        rows.append(tested)
        progress(summary(tested))
    # HF after the engine's rows: its compiled graphs never share the GPU with ours, and the engine's
    # figures are already in the log (``progress``) should the slow peers run past a time limit
    hf = hf_rows(ctx.model, ctx.prompt, s["new"], ctx.sub_prompts, ctx.sub_lengths, ctx.workload, on_gpu=ctx.on_gpu,
                 repeats=s["slow_repeats"], progress=progress)
    release()
    rows += hf
    for r in hf:
        progress(summary(r))
    e1_metrics(ctx, result, tested, hf[2])
    e2_metrics(result, bf16, int4, defined_here=ctx.on_gpu and ctx.size == "full")
    report_rows(ctx, result, rows, impl, out_dir)
    result.tables["INT4 vs float weights under continuous batching (E.2)"] = e2_table(
        bf16, int4, streams=s["streams"], new_tokens=s["new"], requests=len(ctx.prompts), max_num_seqs=s["seqs"],
        group_size=ctx.quant_group_size, float_dtype=s["dtype"])
    return result


def summary(r: Row) -> str:
    if r.skip:
        return f"  {r.name}: SKIP ({r.skip})"
    parts = [f"{r.throughput:.1f} tok/s" if r.throughput else "", f"{r.decode_s * 1e3:.3f} ms/token" if r.decode_s else "",
             f"MBU {100 * r.mbu:.1f} %" if r.mbu is not None else "",
             f"ITL p50 {r.itl_p50 * 1e3:.3f} ms" if r.itl_p50 else ""]
    return f"  {r.name}: " + ", ".join(p for p in parts if p)


def e1_metrics(ctx: Context, result: BenchResult, tested: Row, hf_batch: Row) -> None:
    if not (ctx.on_gpu and ctx.size == "full"):
        result.skip("e1_decode_mbu", E1_GPU_ONLY)
        result.skip("e1_throughput_vs_hf", E1_GPU_ONLY)
        return
    result.metrics["e1_decode_mbu"] = tested.mbu
    result.metrics["e1_decode_tok_s"] = 1.0 / tested.decode_s
    if hf_batch.throughput:
        result.metrics["e1_throughput_vs_hf"] = tested.throughput / hf_batch.throughput
        if "one at a time" in tested.throughput_note:
            result.notes.append("the engine under test has no batching: its throughput is one request at a time")
    else:
        result.skip("e1_throughput_vs_hf", hf_batch.skip or "HF generate_batch was not measured")


def report_rows(ctx: Context, result: BenchResult, rows: list[Row], impl: str, out_dir: Path | None) -> None:
    for r in rows:
        if r.decode_s:
            moved = r.bytes_per_token or ctx.bytes_per_token
            r.mbu = r.mbu if r.mbu is not None else ctx.mbu(r.decode_s, moved)
            result.comparisons.append(Comparison(r.name, r.decode_s, moved, ctx.flops_per_token, note=r.mode))
            result.roofline.append(RooflinePoint(f"bs=1 decode: {r.name}", ctx.flops_per_token, moved, r.decode_s))
        if r.skip:
            result.notes.append(f"{r.name}: SKIP ({r.skip})")
    result.tables = {"The engine, phase by phase (beside HF transformers)": comparison_table(rows, ctx.on_gpu),
                     **result.tables}
    stem = report_stem(ctx.device_info.slug, impl, ctx.size)
    directory = Path(out_dir) if out_dir is not None else ROOT / "reports" / "shared"
    png = plot_rows(rows, directory / f"{stem}.engine.png", f"TinyLlama engine on {ctx.device_info.name}")
    if png:
        result.tables["The same table, plotted"] = f"![engine comparison]({png.name})"
