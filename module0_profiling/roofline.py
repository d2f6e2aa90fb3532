"""The roofline model: count the work, count the bytes, and see which ceiling you are under.

Attainable FLOP/s = min(peak FLOP/s, arithmetic intensity × memory bandwidth), where arithmetic
intensity (AI) = FLOPs / bytes that must cross the DRAM interface. Left of the ridge point
(peak / bandwidth) a kernel is memory-bound: only fewer bytes make it faster. Right of it, it is
compute-bound. Batch-1 LLM decode reads every weight once per token for 2 FLOPs per weight: AI ≈ 1
FLOP/byte in bf16, two to three orders of magnitude left of an H100's ridge (~300 FLOP/byte).

The counters give the *minimum* traffic: each input read once, each output written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from module0_profiling.targets import RooflinePoint


def matmul_flops(m: int, n: int, k: int) -> float:
    """[m, k] @ [k, n]: one multiply and one add per (m, n, k)."""
    return 2.0 * m * n * k


def matmul_bytes(m: int, n: int, k: int, elem_bytes: float = 2, out_bytes: float | None = None) -> float:
    """Read A [m, k] and B [k, n] once, write C [m, n] once."""
    out_bytes = elem_bytes if out_bytes is None else out_bytes
    return (m * k + k * n) * elem_bytes + m * n * out_bytes


def gemv_flops(n: int, k: int, batch: int = 1) -> float:
    """A linear layer applied to ``batch`` vectors: weights [n, k]."""
    return matmul_flops(batch, n, k)


def gemv_bytes(n: int, k: int, batch: int = 1, weight_bytes: float = 2, act_bytes: float = 2) -> float:
    """Weights dominate at small batch: n·k weights + batch·(k + n) activations."""
    return n * k * weight_bytes + batch * (k + n) * act_bytes


def elementwise_bytes(numel: int, reads: int = 1, writes: int = 1, elem_bytes: float = 2) -> float:
    """An element-wise op touching ``reads`` inputs and ``writes`` outputs of ``numel`` elements."""
    return numel * (reads + writes) * elem_bytes


def elementwise_flops(numel: int, flops_per_element: float = 1) -> float:
    return numel * flops_per_element


def attention_decode_flops(batch: int, q_heads: int, head_dim: int, context: int) -> float:
    """One new query per sequence: QK^T and PV, 2 FLOPs per multiply-add each."""
    return 4.0 * batch * q_heads * head_dim * context


def attention_decode_bytes(
    batch: int, q_heads: int, kv_heads: int, head_dim: int, context: int, elem_bytes: float = 2
) -> float:
    """Every K and V element of the context read once (GQA: kv_heads, not q_heads), q read, out written."""
    kv = 2 * batch * kv_heads * context * head_dim * elem_bytes
    qo = 2 * batch * q_heads * head_dim * elem_bytes
    return kv + qo


def attention_prefill_flops(batch: int, heads: int, head_dim: int, seqlen: int, causal: bool = True) -> float:
    """QK^T and PV over a square score matrix; a causal mask halves the useful work."""
    full = 4.0 * batch * heads * head_dim * seqlen * seqlen
    return full / 2 if causal else full


@dataclass
class Ceiling:
    label: str
    tflops: float
    gbps: float

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the memory and compute roofs meet."""
        return self.tflops * 1e12 / (self.gbps * 1e9)

    def attainable_tflops(self, intensity: float) -> float:
        return min(self.tflops, intensity * self.gbps * 1e9 / 1e12)

    def min_seconds(self, flops: float, nbytes: float) -> float:
        """The least time work of ``flops`` moving ``nbytes`` can take under these roofs: whichever of
        the memory time and the compute time is longer (a step's floor; the two overlap at best)."""
        return max(nbytes / (self.gbps * 1e9), flops / (self.tflops * 1e12))


def position(point: RooflinePoint, ceiling: Ceiling) -> dict:
    """Where a measured point sits: bound, attainable rate and the fraction of it achieved."""
    attainable = ceiling.attainable_tflops(point.intensity)
    bound = "memory" if point.intensity < ceiling.ridge else "compute"
    return {
        "label": point.label,
        "intensity": point.intensity,
        "tflops": point.tflops,
        "gbps": point.gbps,
        "bound": bound,
        "attainable_tflops": attainable,
        "fraction_of_roof": point.tflops / attainable if attainable else 0.0,
    }


def plot_roofline(
    path: str,
    ceilings: Sequence[Ceiling],
    points: Sequence[RooflinePoint],
    title: str = "Roofline",
) -> str:
    """Draw the roofs (measured solid, datasheet dashed), their ridge points and the measured points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lo = min([0.05] + [p.intensity / 3 for p in points if p.intensity > 0])
    hi = max([2 * max((c.ridge for c in ceilings), default=100)] + [p.intensity * 3 for p in points])
    ai = np.logspace(np.log10(lo), np.log10(hi), 200)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, c in enumerate(ceilings):
        style = "-" if i == 0 else "--"
        ax.loglog(ai, np.minimum(c.tflops, ai * c.gbps / 1e3), style, linewidth=2, label=f"{c.label}")
        ax.axvline(c.ridge, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"ridge {c.ridge:.0f}", (c.ridge, c.tflops), fontsize=8, rotation=90, va="top")
    for p in points:
        ax.loglog([p.intensity], [p.tflops], "o")
        ax.annotate(p.label, (p.intensity, p.tflops), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("Arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
