"""Turn the decode sweeps (``throughput.sweep_rank`` of TP=1 and of every TP=2 rank) into P6.2/P6.3 figures.

Per TP=2 configuration and batch, the ranks' figures are averaged (the collectives keep the ranks in lockstep,
so their step times agree; their exposed communication differs by who waited for whom). The exposed
communication is the profiler's (NCCL time no compute kernel overlaps) when every rank's trace shows NCCL
kernels, else the ``NoCommGroup`` ablation's (step − no-comm step); ``Exposed.source`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Exposed:
    seconds: float
    source: str  # "profiler" or "ablation"


def mean_over_ranks(ranks: list[dict], label: str, key: str) -> list[float] | None:
    """Per batch mean of ``key`` over the ranks; None when a rank did not measure it."""
    if not all(key in r[label] for r in ranks):
        return None
    cols = [r[label][key] for r in ranks]
    return [sum(v) / len(v) for v in zip(*cols, strict=True)]


def ablation_exposed(ranks: list[dict], label: str) -> list[float] | None:
    step, nocomm = mean_over_ranks(ranks, label, "step_s"), mean_over_ranks(ranks, label, "nocomm_step_s")
    if step is None or nocomm is None:
        return None
    return [max(s - n, 0.0) for s, n in zip(step, nocomm, strict=True)]


def profiler_exposed(ranks: list[dict], label: str) -> list[float | None] | None:
    """Mean exposed NCCL seconds per batch; None at a batch where some rank's trace had no NCCL kernel."""
    exposed, kernels = mean_over_ranks(ranks, label, "exposed_s"), None
    if exposed is None:
        return None
    kernels = [min(v) for v in zip(*[r[label]["comm_kernels"] for r in ranks], strict=True)]
    return [e if k > 0 else None for e, k in zip(exposed, kernels, strict=True)]


def exposed_at(ranks: list[dict], labels: list[str], i: int) -> dict[str, Exposed] | None:
    """Exposed communication of each config at batch index ``i``, all from the same source."""
    prof = {lb: profiler_exposed(ranks, lb) for lb in labels}
    if all(p is not None and p[i] is not None for p in prof.values()):
        return {lb: Exposed(prof[lb][i], "profiler") for lb in labels}
    abl = {lb: ablation_exposed(ranks, lb) for lb in labels}
    if all(a is not None for a in abl.values()):
        return {lb: Exposed(abl[lb][i], "ablation") for lb in labels}
    return None


def _cell(v: float | None, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def best_mode(ranks: list[dict], modes: list[str], i: int) -> str:
    """The faster of the solution's modes (half-batch overlap on / off) at batch index ``i``: the engine
    captures one graph per batch size and can capture whichever mode is faster there."""
    return min(modes, key=lambda m: mean_over_ranks(ranks, m, "step_s")[i])


def throughput_table(batches: list[int], tp1: list[float], ranks: list[dict], modes: list[str],
                     others: list[str]) -> str:
    """tok/s per batch for TP=1 and each TP=2 config; the faster solution mode's speed-up and comm shares."""
    step = {lb: mean_over_ranks(ranks, lb, "step_s") for lb in modes + others}
    head = ("| batch | TP=1 tok/s | " + " | ".join(f"TP=2 {lb} tok/s" for lb in modes + others) +
            " | faster mode | TP=2/TP=1 | comm share (profiler) | comm share (ablation) |")
    lines = [head, "|" + "---|" * (6 + len(modes) + len(others))]
    for i, b in enumerate(batches):
        mode = best_mode(ranks, modes, i)
        s = step[mode][i]
        prof, abl = profiler_exposed(ranks, mode), ablation_exposed(ranks, mode)
        cells = [str(b), f"{b / tp1[i]:.0f}"] + [f"{b / step[lb][i]:.0f}" for lb in modes + others]
        cells += [mode, f"{tp1[i] / s:.2f}×",
                  _cell(None if prof is None or prof[i] is None else 100 * prof[i] / s, "{:.1f} %"),
                  _cell(None if abl is None else 100 * abl[i] / s, "{:.1f} %")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comm_table(batches: list[int], ranks: list[dict], labels: list[str], i: int, model_us: dict[str, float]) -> str:
    """At batch index ``i``: per config step time, NCCL kernel time, exposed time (both views), α-β model."""
    lines = ["| TP=2 config | step µs | NCCL kernels / step | NCCL kernel µs | exposed µs (profiler) | "
             "exposed µs (ablation) | α-β all-reduce model µs |", "|---|---|---|---|---|---|---|"]
    for lb in labels:
        step = mean_over_ranks(ranks, lb, "step_s")[i]
        nccl, kern = mean_over_ranks(ranks, lb, "nccl_s"), mean_over_ranks(ranks, lb, "comm_kernels")
        prof, abl = profiler_exposed(ranks, lb), ablation_exposed(ranks, lb)
        lines.append(f"| {lb} | {step * 1e6:.0f} | {_cell(None if kern is None else kern[i], '{:.0f}')} | "
                     f"{_cell(None if nccl is None else nccl[i] * 1e6, '{:.0f}')} | "
                     f"{_cell(None if prof is None or prof[i] is None else prof[i] * 1e6, '{:.0f}')} | "
                     f"{_cell(None if abl is None else abl[i] * 1e6, '{:.0f}')} | "
                     f"{_cell(model_us.get(lb), '{:.0f}')} |")
    return f"batch {batches[i]}\n\n" + "\n".join(lines)


def allreduce_model_us(predict, batch: int, hidden: int, layers: int, elem: int, halves: bool) -> float:
    """The α-β prediction of a step's layer all-reduces: 2 per layer of ``batch × hidden`` elements
    (with the half-batch overlap: 4 per layer of half the rows). Embedding/lm_head collectives not counted."""
    if halves and batch >= 2:
        return 4 * layers * predict(batch // 2 * hidden * elem) * 1e6
    return 2 * layers * predict(batch * hidden * elem) * 1e6
