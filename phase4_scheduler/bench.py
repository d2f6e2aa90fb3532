"""Phase 4 benchmark: offline throughput (solution vs static batching vs HF ``generate_batch``), GPU
busy under saturating load, HTTP TTFT/TPOT, SJF vs FCFS on short requests with aging's bound, and a
10× overload of a live server, and prefill/decode disaggregation vs the colocated engine on a prefill-heavy
Poisson load (P4.6, P4.7: GPU; SKIP on CPU, figures in a table), and the offline run against its roofline
(P4.9: the sum of its steps' floors over its wall time; P4.10: host time of a full step over the step, GPU;
``step_roofline`` records the steps of the P4.1 run itself), and online serving at three loads under the
default flags and other settings, against the offline engine (P4.11, P4.12: ``online_bench``), with the host
CPU a streamed request costs by stage, the model stubbed (``host_costs``) — all in one run.

P4.1 is continuous vs static batching (the phase's framework): same requests, model and seats, throughput
computed the same way for both; the HF peer's ratio is reported beside it (GPU). P4.4 counts engine steps,
not seconds: the same requests under FCFS and SJF, each short request's latency = the step its last token
was applied minus the step it was added, so the ratio is the same on any machine.

size "small" (CPU, bundled model, < 1 min): P4.1 (vs static), P4.4 and P4.5 measured for real; the GPU
targets (P4.2 the GPU trace, P4.3 absolute latencies meant for a GPU, P4.9 and P4.10 bars set for a GPU) SKIP
with their reason, their CPU figures shown in the tables. size "full": TinyLlama shapes on CUDA.
"""

from __future__ import annotations

import asyncio

import torch

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.roofline import Ceiling
from module0_profiling.targets import BenchResult, Comparison, RooflinePoint
from module0_profiling.timing import time_region
from phase0_prototype.sampling import SamplingParams
from phase0_prototype.sources import load_model
from phase4_scheduler.disagg.bench import measure_disaggregation
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.host_costs import measure_host_costs
from phase4_scheduler.loadgen import Workload, run_http, run_offline
from phase4_scheduler.online_bench import measure_online
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.prefix_bench import measure_prefix_caching
from phase4_scheduler.step_roofline import StepRecorder, roofline_of
from phase4_scheduler.step_roofline import table as step_roofline_table

SIZES = {
    "small": dict(model="kjv-llama-18m", dtype="fp32", device="cpu", offline=16, long=60, seqs=8, budget=128,
                  p44_requests=16, p44_long=60, p44_seqs=4, overload_seqs=2, overload_queue=2),
    # budget 8192 (vLLM V1's server default on large GPUs): prompts are prefilled in few,
    # large steps, so most steps are decode-only and replay a CUDA graph.
    "full": dict(model="random:tinyllama", dtype="bf16", device="cuda", offline=512, long=200, seqs=256, budget=8192,
                 p44_requests=64, p44_long=200, p44_seqs=8, overload_seqs=32, overload_queue=32),
}


def _engine(model, impl: str, seqs: int, budget: int, policy: str = "sjf", max_wait: int | None = 64, **kw):
    return BatchingEngine(model, BatchingConfig(SchedulerConfig(seqs, budget, policy, max_wait), impl, **kw))


def _warm(engine: BatchingEngine) -> BatchingEngine:
    """First-call costs (CUDA graphs of every decode bucket, Triton compiles and autotuning, the allocator)
    outside the timing, as a server pays them before taking requests."""
    if engine.runner.graphs is not None:
        engine.runner.graphs.warmup()
    run_offline(engine, Workload(8, 4, 8))
    return engine


def offline_with_steps(engine: BatchingEngine, w: Workload, recorder: StepRecorder | None = None) -> dict:
    """``run_offline``'s summary plus ``steps``: the engine steps the run took (rows per step, the idea).
    ``recorder``: record every step's shape and host time (``step_roofline``; a few µs a step)."""
    before = engine.scheduler.step_count
    if recorder is None:
        m = run_offline(engine, w)
    else:
        with recorder.attached(engine):
            m = run_offline(engine, w)
    return {**m, "steps": engine.scheduler.step_count - before}


def measure_offline(result: BenchResult, model, impl: str, s: dict) -> None:
    """P4.1: the same requests through static batching (the framework) and ``impl``, same seats and budget."""
    w = Workload(s["offline"], long_tokens=s["long"])
    warm = _warm(_engine(model, impl, s["seqs"], s["budget"]))
    recorder = StepRecorder()
    solution = offline_with_steps(warm, w, recorder)
    measure_roofline(result, warm, recorder, solution["seconds"], f"{impl}, {len(w.requests())} requests at once")
    static = offline_with_steps(_warm(_engine(model, "framework", s["seqs"], s["budget"])), w)
    tokens = sum(n for _, n, _ in w.requests())
    result.comparisons += [
        Comparison("static batching (framework)", tokens / static["throughput_tok_s"], note="FCFS, batch to completion"),
        Comparison(f"continuous batching ({impl})", tokens / solution["throughput_tok_s"], note="token budget, SJF"),
    ]
    result.metrics["throughput_tok_s"] = solution["throughput_tok_s"]
    result.metrics["throughput_vs_static"] = solution["throughput_tok_s"] / static["throughput_tok_s"]
    result.metrics["steps_vs_static"] = static["steps"] / solution["steps"]
    result.metrics["kv_usage_mean"] = solution["kv_usage_mean"]
    rows = [(f"static batching (framework), {s['seqs']} seats", static),
            (f"continuous batching ({impl}), {s['seqs']} seats", solution)]
    hf_row = ""
    if model.device.type == "cuda":
        hf_seconds, reason = _hf_generate_batch(model, w)
        if hf_seconds is None:
            result.skip("throughput_vs_hf", reason)
        else:
            result.metrics["throughput_vs_hf"] = solution["throughput_tok_s"] / (tokens / hf_seconds)
            result.comparisons.append(Comparison("HF transformers generate_batch", hf_seconds, note="paged, same requests"))
            hf_tok_s = tokens / hf_seconds
            hf_row = (f"| HF transformers generate_batch | {hf_tok_s:.0f} | — | — | — | — | "
                      f"{hf_tok_s / static['throughput_tok_s']:.2f}× |\n")
    else:
        result.skip("throughput_vs_hf", "the HF generate_batch peer is measured on a CUDA GPU only")
    result.tables["Offline throughput (P4.1)"] = (
        f"{len(w.requests())} requests at once, {tokens} output tokens, the same for every engine; tok/s = output "
        "tokens / the run's wall time. Steps: the engine steps of the run — static batching runs each batch as long "
        "as its longest request, so its rows per step fall as requests end.\n\n"
        "| engine | tok/s | steps | TTFT p50 | TPOT p50 | KV usage mean | vs static |\n|---|---|---|---|---|---|---|\n"
        + "".join(f"| {name} | {m['throughput_tok_s']:.0f} | {m['steps']} | {m['ttft_p50'] * 1e3:.1f} ms | "
                  f"{m['tpot_p50'] * 1e3:.2f} ms | {m['kv_usage_mean'] * 100:.0f} % | "
                  f"{m['throughput_tok_s'] / static['throughput_tok_s']:.2f}× |\n" for name, m in rows)
        + hf_row)
    if model.device.type != "cuda":
        result.skip("gpu_busy", "GPU busy needs a CUDA GPU (module0 trace)")
        result.ncu_reason = "no CUDA GPU: ncu profiles a 64-request decode step of TinyLlama on a GPU"
        return
    from module0_profiling.trace import ncu_section, profile_region

    ncu_section(result, NCU_SNIPPET.format(impl=impl), launch_count=16)
    busy_engine = warm
    result.trace = profile_region(lambda: run_offline(busy_engine, Workload(s["seqs"], long_tokens=64)), iters=1, warmup=0)
    result.trace_region = f"offline run of {s['seqs']} requests (saturating the batch)"
    if result.trace.gpu_busy is not None:
        result.metrics["gpu_busy"] = result.trace.gpu_busy


def measure_roofline(result: BenchResult, engine: BatchingEngine, recorder: StepRecorder, wall_s: float,
                     what: str) -> None:
    """P4.9 (the run's floor over its wall time) and P4.10 (host time of a full step over its wall time), from
    the steps ``recorder`` saw; both judged on a CUDA GPU, their CPU figures in the table."""
    device, seqs = detect_device(), engine.config.scheduler.max_num_seqs
    if device.kind != engine.model.device.type:
        for metric in ("roofline_fraction", "host_share"):
            result.skip(metric, f"the measured peaks are the {device.kind}'s, the model runs on "
                                f"{engine.model.device.type}")
        return
    peaks = measured_peaks(device)
    ceiling = Ceiling(f"measured ({peaks.matmul_dtype} matmul, copy)", peaks.matmul_tflops, peaks.copy_gbps)
    r = roofline_of(recorder, engine.model.config, engine.model.dtype.itemsize, ceiling, wall_s, seqs)
    result.tables["Serving against its roofline (P4.9, P4.10)"] = step_roofline_table(r, what, device.is_cuda)
    result.roofline.append(RooflinePoint(f"offline run, {seqs} seats (all steps)", r.flops, r.bytes, wall_s))
    if device.is_cuda:
        result.metrics["roofline_fraction"] = r.fraction
        result.metrics["host_share"] = r.host_share
    else:
        result.skip("roofline_fraction", "the 70 % bar is set for a GPU at max_num_seqs 256: the CPU run's fraction "
                                         "is in the roofline table")
        result.skip("host_share", "on a CPU the forward pass runs inside the runner's launch, so host time is no "
                                  "share of a GPU step: the CPU figures are in the roofline table")


NCU_SNIPPET = """
import torch
from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.plan import SchedulerConfig
model = load_model("random:tinyllama", dtype="bf16", device="cuda")
engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(64, 8192), {impl!r}, cuda_graphs=False))
for i in range(64):  # 64 requests of 512 prompt tokens: one prefill step, then decode-only steps
    engine.add(engine.make_request(list(range(3 + i, 515 + i)), 16, ignore_eos=True))
for _ in range(4):
    engine.step()
torch.cuda.synchronize()
with torch.cuda.nvtx.range("titaninfer"):  # a decode step of 64 rows: its first layer's kernels
    engine.step()
torch.cuda.synchronize()
"""


def _hf_generate_batch(model, w: Workload) -> tuple[float | None, str]:
    try:
        from transformers import GenerationConfig

        from phase0_prototype.hf_peer import build_hf

        hf = build_hf(model)
        if not hasattr(hf, "generate_batch"):
            return None, "this transformers has no generate_batch (continuous batching)"
        tok = model.tokenizer
        reqs = w.requests()
        groups = {}
        for _, n, p in reqs:
            groups.setdefault(n, []).append(tok.encode(p))
        def serve_all() -> None:
            for n, inputs in groups.items():  # generate_batch takes one max_new_tokens per call
                cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                       pad_token_id=0)
                hf.generate_batch(inputs=inputs, generation_config=cfg, progress_bar=False)

        return time_region(serve_all, repeats=1, warmup=0).median, ""
    except Exception as e:  # noqa: BLE001 - the peer's failure is a SKIP reason, not our failure
        return None, f"HF generate_batch failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def latency_in_steps(engine: BatchingEngine, w: Workload) -> dict[str, float]:
    """``w``'s requests through ``engine`` at once; mean latency in engine steps of the short and of the long
    requests (the step at which the engine applied a request's last token minus the step it was added), and
    the run's steps. Counted from the outside (``generate``'s ``on_step``), so the number depends on the
    scheduler's decisions alone, not on the machine: ``ignore_eos`` fixes every request's length."""
    tok = engine.tokenizer
    requests = [engine.make_request(tok.encode(p), n, ignore_eos=True) for _, n, p in w.requests()]
    finished_at: dict[int, int] = {}
    unfinished = list(requests)

    def on_step(e: BatchingEngine) -> None:
        nonlocal unfinished
        for r in unfinished:
            if r.finished:
                finished_at[r.request_id] = e.scheduler.step_count
        unfinished = [r for r in unfinished if not r.finished]

    first = engine.scheduler.step_count
    engine.generate(requests, on_step=on_step)
    latency = {r.request_id: finished_at[r.request_id] - r.arrival_step for r in requests}
    short = [latency[r.request_id] for r in requests if r.max_tokens == w.short_tokens]
    long = [latency[r.request_id] for r in requests if r.max_tokens != w.short_tokens]
    return {"short_mean_steps": sum(short) / len(short), "long_mean_steps": sum(long) / len(long),
            "steps": engine.scheduler.step_count - first}


def measure_policies(result: BenchResult, model, impl: str, s: dict) -> None:
    """P4.4: mean latency in engine steps of the short requests, FCFS vs SJF, same requests; aging's wait
    bound, also in steps."""
    w = Workload(s["p44_requests"], long_tokens=s["p44_long"])
    rows = {policy: latency_in_steps(_engine(model, impl, s["p44_seqs"], s["budget"], policy, None), w)
            for policy in ("fcfs", "sjf")}
    result.metrics["short_latency_speedup"] = rows["fcfs"]["short_mean_steps"] / rows["sjf"]["short_mean_steps"]
    result.tables["SJF vs FCFS (P4.4, latency in engine steps)"] = (
        f"{w.num_requests} requests at once ({w.short_tokens} or {w.long_tokens} new tokens), {s['p44_seqs']} seats, "
        "no aging; latency = the step its last token was applied − the step it was added.\n\n"
        "| policy | short requests' mean latency | long requests' mean latency | steps of the run |\n|---|---|---|---|\n"
        + "".join(f"| {p} | {m['short_mean_steps']:.1f} steps | {m['long_mean_steps']:.1f} steps | {m['steps']} |\n"
                  for p, m in rows.items()))
    # Aging: one long job among a stream of short ones (one more each step) on 2 seats, under SJF.
    waits, max_wait, short = {}, 16, 3
    for aging in (None, max_wait):
        engine = _engine(model, impl, 2, 32, "sjf", aging)
        tok = model.tokenizer
        long_job = engine.make_request(tok.encode("In the beginning"), 40, ignore_eos=True)
        seed = [long_job] + [engine.make_request(tok.encode("And"), short, ignore_eos=True) for _ in range(2)]
        stream = [engine.make_request(tok.encode("And God said"), short, SamplingParams(), ignore_eos=True)
                  for _ in range(60)]
        engine.generate(seed, on_step=lambda e, stream=stream: stream and e.add(stream.pop(0)))
        waits[aging] = long_job.first_scheduled_step - long_job.arrival_step
    result.metrics["aged_max_wait"] = waits[max_wait]
    # Once aged, it takes the first free seat: a short job in it runs its `short` steps, its seat is free one
    # step later (the overlapped engine applies a step's tokens during the next), and admission takes a step.
    result.metrics["wait_bound"] = max_wait + short + 2
    result.tables["Aging (P4.4, one long job among a stream of short ones, 2 seats)"] = (
        f"| aging | wait of the long job (steps) |\n|---|---|\n| off | {waits[None]} |\n"
        f"| max_wait_steps={max_wait} | {waits[max_wait]} (bound {max_wait} + {short} + 2) |\n")


def measure_http(result: BenchResult, model_name: str, s: dict, impl: str) -> None:
    """P4.5 (and P4.3 on a GPU): a live server on a free local port."""
    try:
        from phase4_scheduler.serve import ServerThread, build_app
    except ImportError as e:  # a machine with torch but without the server's packages (e.g. a bare GPU image)
        reason = f"the HTTP server cannot start here ({e}): pip install fastapi uvicorn"
        for metric in ("overload_lost", "overload_rejected", "kv_free_after", "ttft_p50_light", "tpot_p50_32_streams"):
            result.skip(metric, reason)
        return

    seqs, queue = s["overload_seqs"], s["overload_queue"]
    app, loop = build_app(model_name, device=s["device"], dtype=s["dtype"], scheduler_impl=impl,
                          scheduler=SchedulerConfig(seqs, s["budget"]), max_queue=queue)
    with ServerThread(app) as srv:
        n = 10 * (seqs + queue)
        over = asyncio.run(run_http(srv.url, model_name, Workload(n, 10, 20)))
        if s["device"] == "cuda":
            light = asyncio.run(run_http(srv.url, model_name, Workload(16, 32, 32, rate=2.0)))
            streams = asyncio.run(run_http(srv.url, model_name, Workload(64, 64, 64, concurrency=32)))
            result.metrics["ttft_p50_light"] = light["ttft_p50"]
            result.metrics["tpot_p50_32_streams"] = streams["tpot_p50"]
    engine = loop.engine
    result.metrics["overload_lost"] = over["requests"] - over["completed"] - over["rejected"]
    result.metrics["overload_rejected"] = over["rejected"]
    result.metrics["kv_free_after"] = engine.blocks.num_free_gpu_blocks / engine.blocks.num_gpu_blocks
    result.tables["10× overload"] = (
        f"{n} requests at once against {seqs} seats + a queue of {queue}: {over['completed']} completed, "
        f"{over['rejected']} refused with 429, {over['failed']} failed; KV free after: "
        f"{result.metrics['kv_free_after'] * 100:.0f} %.\n")
    if s["device"] != "cuda":
        result.skip("ttft_p50_light", "TTFT/TPOT thresholds are set for a GPU; the CPU run does not measure them")
        result.skip("tpot_p50_32_streams", "TTFT/TPOT thresholds are set for a GPU; the CPU run does not measure them")


def run(impl: str = "solution", size: str = "small") -> BenchResult:
    s = dict(SIZES[size])
    if size == "full" and not torch.cuda.is_available():
        raise RuntimeError("size 'full' needs a CUDA GPU: use --size small on a CPU")
    result = BenchResult(context={"model": s["model"], "dtype": s["dtype"], "device": s["device"], "impl": impl,
                                  "size": size, "max_num_seqs": s["seqs"], "token_budget": s["budget"]})
    model = load_model(s["model"], dtype=s["dtype"], device=s["device"])
    measure_offline(result, model, impl, s)
    measure_policies(result, model, impl, s)
    measure_http(result, s["model"], s, impl)
    measure_disaggregation(result, size)
    measure_prefix_caching(result, size)
    measure_online(result, size, impl)
    measure_host_costs(result, size)
    result.notes.append("The workload is 50 % short / 50 % long outputs with ignore_eos, greedy. P4.4 and aging "
                        "count engine steps (the same on any machine); every other latency and throughput is "
                        "wall-clock through this process.")
    return result
