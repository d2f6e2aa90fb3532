"""Phase 6 measurements for P6.1–P6.4 (``module0_profiling.targets`` contract).

- **P6.1** (measured on any machine): greedy tokens of the implementation at TP=1 (this process) and TP=2
  (two spawned ranks; gloo on CPU, NCCL on 2 GPUs), fp32, same seeded weights — identical or not. On GPUs
  both decode paths are compared: CUDA-graph replays (``generate``'s default there) and eager steps.
  ``size="small"``: ``random:tiny``, batch 2, prompt 16, 24 new tokens; ``"full"``: ``random:tinyllama``.
- **P6.2** (2+ GPUs): ``random:tinyllama`` bf16, context 256, one decode step replayed from a CUDA graph
  (``static_decode``), batch 1–256, TP=1 (this process) and TP=2; speed-up = best TP=2/TP=1 throughput ratio
  at batch ≥ 64, the solution in the faster of its two modes at each batch (half-batch overlap on or off: a
  graph is captured per batch size, so the engine can pick); comm share = exposed communication / step at
  that batch and mode, from the profiler (NCCL kernel time no compute kernel overlaps, mean of the ranks);
  the ``NoCommGroup`` ablation is shown beside it.
- **P6.3** (2+ GPUs): exposed communication of the solution (overlap on) over the framework's, TP=2, batch 64,
  same measure.
- **P6.4** (2+ GPUs): ``allreduce_study.run_study`` — per NCCL algorithm (Ring, Tree) one torchrun as NCCL
  chooses (the measured curve) and one per forced ``NCCL_PROTO`` (LL, LL128, Simple; fewer iterations),
  1 KB–256 MB, k all-reduces per CUDA-graph replay. Metric: worst relative error of NCCL's own model — the
  minimum over the protocols' α-β lines, each fitted (minimax) to its forced sweep — vs the default sweep.
  The single minimax line fitted to the default sweep is reported beside it
  (``p6_4_single_line_error_ring``/``_tree``, not a target).

On a CPU the gloo run also times a tiny all-reduce sweep (a smoke of the study code, not P6.4).
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

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
SWEEP = dict(model="random:tinyllama", dtype="bf16", batches=[1, 4, 16, 64, 128, 256], context=256, steps=30,
             p6_3_batch=64, profile_iters=10)


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
    tp1_eager = engine.generate(prompt, shapes["new"], graph=False) if device == "cuda" else tp1
    del engine, model
    progress(f"P6.1 TP=2 on 2 spawned ranks ({'NCCL' if device == 'cuda' else 'gloo'})")
    sizes = [] if device == "cuda" else [1024, 16384, 262144]
    ranks = spawn(bench_rank, 2, impl, shapes["model"], prompt, shapes["new"], device, sizes,
                  device=device, timeout_s=150)
    pairs = [(tp1, r["greedy"]) for r in ranks] + [(tp1_eager, r["greedy_eager"]) for r in ranks]
    same = all(torch.equal(a, b) for a, b in pairs)
    # Leading steps identical for every sequence, on every rank and path.
    matched = min(int((a == b).all(dim=0).cumprod(0).sum()) for a, b in pairs)
    result.metrics["p6_1_greedy_identical"] = 1.0 if same else 0.0
    result.metrics["p6_1_tokens_matched"] = float(matched)
    paths = "CUDA graph and eager decode" if device == "cuda" else "eager decode"
    result.context.update(p6_1_new_tokens=shapes["new"], p6_1_paths=paths, tp2_mode=ranks[0]["mode"])
    n = tp1.numel()
    how = "CUDA graph" if device == "cuda" else "eager"
    result.comparisons += [Comparison(f"TP=1 greedy generate ({how}, fp32)", tp1_s, note=f"{n / tp1_s:.0f} tok/s"),
                           Comparison(f"TP=2 greedy generate ({how}, fp32)", ranks[0]["seconds"],
                                      note=f"{n / ranks[0]['seconds']:.0f} tok/s, {ranks[0]['mode']}")]
    sweep = ranks[0]["allreduce"]
    if sweep:
        rows = "\n".join(f"| {s} | {t * 1e6:.0f} |" for s, t in zip(sweep["sizes"], sweep["seconds"], strict=True))
        result.tables["gloo all-reduce on this CPU (smoke of the study code, not P6.4)"] = \
            "| bytes | µs |\n|---|---|\n" + rows


def allreduce_targets(result: BenchResult, out_dir: Path, stem: str, study=None) -> list[dict]:
    """P6.4 on 2 GPUs: Ring and Tree sweeps (default and per forced protocol), the protocol-envelope model's
    worst error (the metric) and the single line's (beside it); plotted beside the report.

    ``study``: ``() -> analysed runs`` (default: the 2-GPU ``run_study``; the tests pass canned runs).
    """
    from phase6_tensor_parallel.allreduce_report import table
    from phase6_tensor_parallel.allreduce_study import run_study

    progress("P6.4 all-reduce sweeps (NCCL_ALGO=Ring, Tree; NCCL picks, then NCCL_PROTO=LL, LL128, Simple)")
    # A forced sweep takes about as long as the default one (torchrun start-up dominates): 90 s bounds a hang.
    runs = study() if study is not None else run_study(2, device="cuda", timeout_s=120, protocol_timeout_s=90)
    for r in runs:
        algo = r["algo"].lower()
        result.metrics[f"p6_4_single_line_error_{algo}"] = r["model_error"]
        if "envelope_error" in r:
            result.metrics[f"p6_4_model_error_{algo}"] = r["envelope_error"]
        else:
            why = "; ".join(f"{p}: {pr['skipped']}" for p, pr in (r.get("protocols") or {}).items())
            result.skip(f"p6_4_model_error_{algo}", f"no forced-protocol sweep of {r['algo']} succeeded ({why})"
                        if why else f"no forced-protocol sweeps of {r['algo']} were run")
        skipped = [p for p, pr in (r.get("protocols") or {}).items() if "skipped" in pr]
        if skipped:
            result.notes.append(f"P6.4 {r['algo']}: NCCL_PROTO={', '.join(skipped)} skipped, the envelope "
                                f"is over the other protocols (reasons in the all-reduce table)")
    result.tables["all-reduce α-β study (2 GPUs)"] = table(runs)
    alpha_beta_figure(runs, result, out_dir, stem)
    return runs


def alpha_beta_figure(runs: list[dict], result: BenchResult, out_dir: Path, stem: str) -> Path | None:
    """``<out_dir>/<stem>.allreduce_alpha_beta.png`` (measured points, per-protocol lines, envelope and single
    line, a panel per algorithm), linked from the report."""
    from phase6_tensor_parallel.allreduce_report import plot

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(runs, str(out_dir / f"{stem}.allreduce_alpha_beta.png"))
    if png is None:
        result.notes.append("all-reduce plot: not drawn (matplotlib is not installed)")
        return None
    png = Path(png)
    result.tables["all-reduce α-β fit, plotted"] = \
        f"![all-reduce time vs message size: per-protocol α-β lines, their envelope, one line]({png.name})"
    return png


def throughput_targets(impl: str, result: BenchResult, *, device: str = "cuda", sweep: dict = SWEEP,
                       allreduce_runs: list[dict] | None = None) -> None:
    """P6.2 and P6.3 on 2 GPUs: CUDA-graph decode steps at TP=1 and TP=2 (framework, solution with and
    without overlap), exposed communication from the profiler (and the no-comm ablation).

    (``device="cpu"`` with a tiny ``sweep`` runs the same code eagerly over gloo: the tests' smoke of this path.)
    """
    from phase6_tensor_parallel.allreduce_study import predictor
    from phase6_tensor_parallel.sweep_tables import (
        allreduce_model_us,
        best_mode,
        comm_table,
        exposed_at,
        mean_over_ranks,
        throughput_table,
    )
    from phase6_tensor_parallel.throughput import sweep_rank

    args = (sweep["model"], sweep["dtype"], device, sweep["batches"], sweep["context"], sweep["steps"])
    prof = dict(profile_iters=sweep.get("profile_iters", 10))
    progress("P6.2 TP=1 decode sweep (CUDA graphs)" if device == "cuda" else "P6.2 TP=1 decode sweep (eager, CPU)")
    tp1 = sweep_rank(TPGroup(), [("tp1", impl, False)], *args, **prof)["tp1"]["step_s"]
    labels = ["framework", impl, f"{impl}_no_overlap"]
    configs = [("framework", "framework", False), (impl, impl, True), (f"{impl}_no_overlap", impl, False)]
    progress("P6.2/P6.3 TP=2 decode sweeps: " + ", ".join(labels))
    ranks = spawn(sweep_rank, 2, configs, *args, device=device, timeout_s=200, kwargs=prof)
    batches = sweep["batches"]
    modes = [impl, f"{impl}_no_overlap"]
    best = None  # (ratio, share, batch index, source, mode)
    for i, b in enumerate(batches):
        mode = best_mode(ranks, modes, i)
        exp = exposed_at(ranks, [mode], i)
        step = mean_over_ranks(ranks, mode, "step_s")[i]
        ratio = tp1[i] / step  # same tokens per step: throughput ratio
        if b >= 64 and exp and (best is None or ratio > best[0]):
            best = (ratio, exp[mode].seconds / step, i, exp[mode].source, mode)
    how = "one CUDA-graph replay per step" if device == "cuda" else "static steps run eagerly over gloo"
    result.tables[f"decode throughput, TP=1 vs TP=2 ({how})"] = \
        throughput_table(batches, tp1, ranks, modes, ["framework"])
    if best is not None:
        result.metrics["p6_2_speedup"], result.metrics["p6_2_comm_share"] = best[0], best[1]
        result.context["p6_2_best"] = f"batch {batches[best[2]]}, {best[4]} (comm share from the {best[3]})"
    else:
        result.skip("p6_2_speedup", "no batch ≥ 64 in the sweep")
        result.skip("p6_2_comm_share", "no batch ≥ 64 in the sweep")
    i = batches.index(sweep["p6_3_batch"])
    exp = exposed_at(ranks, labels, i)
    if exp is None or exp["framework"].seconds <= 0:
        result.skip("p6_3_exposed_comm_ratio", "the framework showed no exposed communication to compare with")
    else:
        result.metrics["p6_3_exposed_comm_ratio"] = exp[impl].seconds / exp["framework"].seconds
        result.context["p6_3_measure"] = f"exposed communication from the {exp[impl].source}, batch {batches[i]}"
    model_us = {}
    if allreduce_runs:
        # Ring's envelope model (its single line where no protocol sweep succeeded): NCCL runs the decode
        # all-reduces as Ring on 2 GPUs.
        ring = predictor(next(r for r in allreduce_runs if r["algo"] == "Ring"))
        c = ranks[0].get("config") or {}
        h, layers, elem = c.get("hidden", 2048), c.get("layers", 22), 2
        model_us = {impl: allreduce_model_us(ring, batches[i], h, layers, elem, True),
                    f"{impl}_no_overlap": allreduce_model_us(ring, batches[i], h, layers, elem, False)}
    result.tables["communication per TP=2 decode step"] = comm_table(batches, ranks, labels, i, model_us)
    for lb in labels:
        result.comparisons.append(Comparison(f"TP=2 {lb} decode step, batch {batches[i]}",
                                             mean_over_ranks(ranks, lb, "step_s")[i],
                                             note=f"exposed comm {exp[lb].seconds * 1e6:.0f} µs ({exp[lb].source})"
                                             if exp else ""))
    result.comparisons.insert(len(result.comparisons) - len(labels),
                              Comparison(f"TP=1 decode step, batch {batches[i]}", tp1[i]))
    summary = ranks[0][impl].get("summary")
    if summary:
        result.trace = summary[i]
        result.trace_region = (f"{prof['profile_iters']} CUDA-graph replays of the TP=2 {impl} decode step, "
                               f"batch {batches[i]}, rank 0")


def run(impl: str, size: str, out_dir: Path | None = None) -> BenchResult:
    """``out_dir``: where the report goes (the check runner passes it); the α-β plot is written beside it."""
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
                       "p6_4_model_error_ring", "p6_4_model_error_tree",
                       "p6_4_single_line_error_ring", "p6_4_single_line_error_tree"):
            result.skip(metric, why)
        return result
    # Each GPU part reports its own failure (as SKIP with the error) so the other part's figures still land.
    from module0_profiling.check import report_stem

    figures = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parents[1] / "reports" / "phase6_tensor_parallel"
    runs = guarded("P6.4", result, ("p6_4_model_error_ring", "p6_4_model_error_tree", "p6_4_single_line_error_ring",
                                    "p6_4_single_line_error_tree"), allreduce_targets, result,
                   figures, report_stem(device_info.slug, impl, size))
    guarded("P6.2/P6.3", result, ("p6_2_speedup", "p6_2_comm_share", "p6_3_exposed_comm_ratio"),
            throughput_targets, impl, result, allreduce_runs=runs)
    return result


def guarded(what: str, result: BenchResult, metrics: tuple[str, ...], fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; on an exception, its metrics are skipped with the error (traceback on stderr)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001  (a report with the error beats no report)
        traceback.print_exc()
        line = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        for m in metrics:
            if m not in result.metrics:
                result.skip(m, f"{what} measurement failed: {line}")
        result.notes.append(f"{what} measurement failed: {line}")
        return None
