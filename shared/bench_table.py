"""The comparison table (Markdown, each row linked to its phase) and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

ROW_NOTE = ("Throughput: new tokens / wall time of the offline workload (engines without batching serve a slice "
            "of the same mix one request at a time). ms/token: bs=1 decode, prefill excluded. MBU: bytes a decode "
            "step must read (weights + KV) / time / measured copy bandwidth. GPU busy: union of GPU activity / wall "
            "time under the profiler. KV utilisation: token slots holding K/V / KV slots reserved.")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def comparison_table(rows, on_gpu: bool, link_prefix: str = "../../") -> str:
    """``link_prefix``: from the report (``reports/shared/``) to the repository root; ``""`` for the README."""
    head = "| version | throughput (tok/s) | latency (ms/token, bs=1) | MBU (bs=1) | GPU busy | KV utilisation | how it runs |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"[{r.name}]({link_prefix}{r.link}/)"
        if r.skip:
            lines.append(f"| {name} | SKIP | — | — | — | — | {r.skip} |")
            continue
        tput = "—" if r.throughput is None else f"{r.throughput:,.0f}"
        if r.throughput_note:
            tput += f" ({r.throughput_note})" if r.throughput is None else ""
        lat = "—" if r.decode_s is None else f"{r.decode_s * 1e3:.2f}"
        busy = _pct(r.gpu_busy) if on_gpu else "n/a (CPU)"
        how = r.mode + (f"; throughput: {r.throughput_note}" if r.throughput_note and r.throughput is not None else "")
        lines.append(f"| {name} | {tput} | {lat} | {_pct(r.mbu)} | {busy} | {_pct(r.kv_utilisation)} | {how} |")
    return "\n".join(lines) + "\n\n" + ROW_NOTE


def path_table(paths: dict[str, float], mbu: Callable[[float], float | None]) -> str:
    names = {"engine": "the engine (`LLMEngine`): phase 4's loop at batch 1, phase 0's fused step in its graph",
             "phase0": "phase 0's engine called directly: static KV cache, one CUDA graph, no scheduler"}
    lines = ["| bs=1 decode | ms/token | tok/s | MBU |", "|---|---|---|---|"]
    for key, s in paths.items():
        lines.append(f"| {names[key]} | {s * 1e3:.3f} | {1 / s:.1f} | {_pct(mbu(s))} |")
    return "\n".join(lines)


def plot_rows(rows, path: Path, title: str) -> Path | None:
    """Two bar charts: throughput (log scale) and bs=1 ms/token, one bar per measured row."""
    measured = [r for r in rows if not r.skip]
    if not measured:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(measured) + 2))
    labels = [r.name for r in measured][::-1]
    for ax, values, xlabel, log in (
        (axes[0], [r.throughput or 0 for r in measured][::-1], "throughput (tok/s, offline workload)", True),
        (axes[1], [(r.decode_s or 0) * 1e3 for r in measured][::-1], "bs=1 decode latency (ms/token)", False),
    ):
        colors = ["tab:grey" if label.startswith("HF") else "tab:blue" for label in labels]
        ax.barh(labels, values, color=colors)
        ax.set_xlabel(xlabel)
        if log and any(values):
            ax.set_xscale("log")
        if any(values):
            ax.set_xlim(right=max(values) * (3 if log else 1.25))
        for y, v in enumerate(values):
            if v:
                ax.annotate(f"{v:,.1f}", (v, y), fontsize=8, xytext=(3, -3), textcoords="offset points")
        ax.grid(True, axis="x", alpha=0.3)
    axes[1].set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
