"""Phase 6 measurements for P6.1–P6.4 (``module0_profiling.targets`` contract).

- **P6.1** (measured on any machine): greedy tokens of the implementation at TP=1 (this process) and TP=2
  (two spawned ranks; gloo on CPU, NCCL on 2 GPUs), fp32, same seeded weights — identical or not.
  ``size="small"``: ``random:tiny``, batch 2, prompt 16, 24 new tokens; ``"full"``: ``random:tinyllama``.
- **P6.2** (2+ GPUs): ``random:tinyllama`` bf16, context 256, decode step time over batch 1–256 at TP=1
  (this process) and TP=2 (solution); speed-up = best TP=2/TP=1 throughput ratio at batch ≥ 64; comm share =
  exposed communication / step at that batch (``throughput.NoCommGroup`` ablation, not the profiler).
- **P6.3** (2+ GPUs): exposed communication (step − no-comm step) of the solution over the framework's, TP=2,
  at batch 64.
- **P6.4** (2+ GPUs): ``allreduce_study.run_study`` — one torchrun per NCCL algorithm (Ring, Tree),
  1 KB–256 MB, α-β fit, worst model error per algorithm.
The GPU paths (P6.2–P6.4) are written and smoke-tested over gloo only; they have not run on GPUs yet.

On a CPU the gloo run also times a tiny all-reduce sweep (a smoke of the study code, not P6.4).
"""

from __future__ import annotations

import sys
import time

import torch

from module0_profiling.hardware import detect_device
from module0_profiling.targets import BenchResult, Comparison
from phase0_prototype import load_model
from phase6_tensor_parallel import load_impl
from phase6_tensor_parallel.dist_env import TPGroup, spawn
from phase6_tensor_parallel.testing import bench_rank

SHAPES = {
    "full": dict(model="random:tinyllama", batch=2, prompt=32, new=64),
    "small": dict(model="random:tiny", batch=2, prompt=16, new=24),
}
GPU_KIND = "nvidia-h200-x2"
SWEEP = dict(model="random:tinyllama", dtype="bf16", batches=[1, 4, 16, 64, 128, 256], context=256, steps=20,
             p6_3_batch=64)


def progress(message: str) -> None:
    print(f"[phase6 bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def random_prompt(batch: int, n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, n), generator=g)


def greedy_tp1_vs_tp2(impl: str, shapes: dict, device: str, result: BenchResult) -> None:
    """P6.1: TP=1 in this process, TP=2 on two spawned ranks, same fp32 weights and prompt."""
    model = load_model(shapes["model"], dtype="fp32", device=device, seed=1)
    prompt = random_prompt(shapes["batch"], shapes["prompt"], model.config.vocab_size)
    engine = load_impl(impl).build(model, max_seq_len=shapes["prompt"] + shapes["new"])
    engine.generate(prompt, 2)
    t0 = time.perf_counter()
    tp1 = engine.generate(prompt, shapes["new"])
    tp1_s = time.perf_counter() - t0
    del engine, model
    progress(f"P6.1 TP=2 on 2 spawned ranks ({'NCCL' if device == 'cuda' else 'gloo'})")
    sizes = [] if device == "cuda" else [1024, 16384, 262144]
    ranks = spawn(bench_rank, 2, impl, shapes["model"], prompt, shapes["new"], device, sizes,
                  device=device, timeout_s=300)
    tp2 = ranks[0]["greedy"]
    same = bool(torch.equal(tp1, tp2)) and bool(torch.equal(tp2, ranks[1]["greedy"]))
    matched = int((tp1 == tp2).all(dim=0).cumprod(0).sum())  # leading steps identical for every sequence
    result.metrics["p6_1_greedy_identical"] = 1.0 if same else 0.0
    result.metrics["p6_1_tokens_matched"] = float(matched)
    result.context.update(p6_1_new_tokens=shapes["new"], tp2_mode=ranks[0]["mode"])
    n = tp1.numel()
    result.comparisons += [Comparison("TP=1 greedy generate", tp1_s, note=f"{n / tp1_s:.0f} tok/s"),
                           Comparison("TP=2 greedy generate", ranks[0]["seconds"],
                                      note=f"{n / ranks[0]['seconds']:.0f} tok/s, {ranks[0]['mode']}")]
    sweep = ranks[0]["allreduce"]
    if sweep:
        rows = "\n".join(f"| {s} | {t * 1e6:.0f} |" for s, t in zip(sweep["sizes"], sweep["seconds"], strict=True))
        result.tables["gloo all-reduce on this CPU (smoke of the study code, not P6.4)"] = \
            "| bytes | µs |\n|---|---|\n" + rows


def allreduce_targets(result: BenchResult) -> None:
    """P6.4 on 2 GPUs: Ring and Tree sweeps, α-β fits, worst model error."""
    from phase6_tensor_parallel.allreduce_study import plot, run_study, table

    progress("P6.4 all-reduce sweeps (NCCL_ALGO=Ring, Tree)")
    runs = run_study(2, device="cuda")
    for r in runs:
        result.metrics[f"p6_4_model_error_{r['algo'].lower()}"] = r["model_error"]
    result.tables["all-reduce α-β study (2 GPUs)"] = table(runs)
    png = plot(runs, "allreduce_alpha_beta.png")
    if png:
        result.notes.append(f"all-reduce plot written to {png}")


def throughput_targets(impl: str, result: BenchResult, *, device: str = "cuda", sweep: dict = SWEEP) -> None:
    """P6.2 and P6.3 on 2 GPUs: decode-step sweeps at TP=1 and TP=2, with the no-communication ablation.

    (``device="cpu"`` with a tiny ``sweep`` runs the same code over gloo: the tests' smoke of this path.)
    """
    from phase6_tensor_parallel.throughput import sweep_rank

    args = (sweep["model"], sweep["dtype"], device, sweep["batches"], sweep["context"], sweep["steps"])
    progress("P6.2 TP=1 decode sweep")
    tp1 = sweep_rank(TPGroup(), impl, *args)
    progress("P6.2/P6.3 TP=2 decode sweeps (framework, solution)")
    tp2 = {name: spawn(sweep_rank, 2, name, *args, device=device, timeout_s=600)[0]
           for name in dict.fromkeys(["framework", impl])}
    batches = sweep["batches"]
    rows, best = [], (0.0, None)
    for i, b in enumerate(batches):
        ratio = tp1["step_s"][i] / tp2[impl]["step_s"][i]  # same tokens per step: throughput ratio
        share = max(tp2[impl]["step_s"][i] - tp2[impl]["nocomm_step_s"][i], 0.0) / tp2[impl]["step_s"][i]
        rows.append(f"| {b} | {b / tp1['step_s'][i]:.0f} | {b / tp2[impl]['step_s'][i]:.0f} | {ratio:.2f}× | "
                    f"{100 * share:.1f} % |")
        if b >= 64 and ratio > best[0]:
            best = (ratio, share)
    result.tables["decode throughput, TP=1 vs TP=2"] = (
        "| batch | TP=1 tok/s | TP=2 tok/s | TP=2/TP=1 | comm share (TP=2) |\n|---|---|---|---|---|\n" + "\n".join(rows))
    if best[1] is not None:
        result.metrics["p6_2_speedup"], result.metrics["p6_2_comm_share"] = best
    i = batches.index(sweep["p6_3_batch"])
    exposed = {n: max(r["step_s"][i] - r["nocomm_step_s"][i], 0.0) for n, r in tp2.items()}
    if exposed["framework"] > 0:
        result.metrics["p6_3_exposed_comm_ratio"] = exposed[impl] / exposed["framework"]
    else:
        result.skip("p6_3_exposed_comm_ratio", "the framework showed no exposed communication to compare with")
    for n, r in tp2.items():
        result.comparisons.append(Comparison(f"TP=2 {n} decode step, batch {batches[i]}", r["step_s"][i],
                                             note=f"exposed comm {exposed[n] * 1e6:.0f} µs"))


def run(impl: str, size: str) -> BenchResult:
    device_info = detect_device()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if size == "full" and gpus < 2:
        raise SystemExit(f"SIZE=full needs 2 CUDA GPUs ({GPU_KIND}); this machine has {gpus}: use SIZE=small")
    shapes = SHAPES[size]
    device = "cuda" if gpus >= 2 else "cpu"
    result = BenchResult()
    result.context = {"model": shapes["model"], "dtype": "fp32 (P6.1)", "batch": shapes["batch"],
                      "prompt_tokens": shapes["prompt"], "new_tokens": shapes["new"], "impl": impl,
                      "device": device_info.name, "gpus": gpus,
                      "backend": "nccl" if device == "cuda" else "gloo"}
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)  # two ranks share the cores: one thread each keeps them from fighting
    try:
        progress(f"P6.1 greedy TP=1 vs TP=2, {shapes['model']} fp32")
        greedy_tp1_vs_tp2(impl, shapes, device, result)
    finally:
        torch.set_num_threads(threads)
    if gpus < 2:
        why = f"needs 2 CUDA GPUs with NCCL ({GPU_KIND}); this machine has {gpus}"
        for metric in ("p6_2_speedup", "p6_2_comm_share", "p6_3_exposed_comm_ratio",
                       "p6_4_model_error_ring", "p6_4_model_error_tree"):
            result.skip(metric, why)
        return result
    throughput_targets(impl, result)
    allreduce_targets(result)
    return result
