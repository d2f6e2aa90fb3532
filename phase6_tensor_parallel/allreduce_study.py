"""All-reduce on N ranks, 1 KB–256 MB: measure, fit the α-β model, compare Ring and Tree, bus bandwidth.

The α-β (Hockney) model prices a message of n bytes at ``α + n·β``: α the per-hop latency (launch, sync,
PCIe/NVLink round trip), β the inverse link bandwidth. An all-reduce is a schedule of such hops:

- **Ring** (reduce-scatter then all-gather around a ring): 2(N−1) steps, each moving n/N bytes::

      t_ring(n) = 2(N−1)·α + 2(N−1)/N · n·β

- **Tree** (NCCL's double binary tree: reduce up, broadcast down, pipelined in chunks so the depth costs
  latency, not bandwidth)::

      t_tree(n) = 2⌈log2 N⌉·α + 2 · n·β

  At N = 2 both have the same latency term; Tree's bandwidth term is 2× Ring's, which is why NCCL picks
  Ring for large messages and Tree (lower latency at large N) for small ones.

Two fits, both on RELATIVE error (timings span five decades; an absolute fit would ignore every small
message): ``fit`` is least squares, Σ (model/t − 1)²; ``fit_minimax`` minimises the WORST relative error
max |model − t| / t (α, β ≥ 0), so its ``model_error`` answers P6.4's question exactly — can any α-β line
describe the measurements within 25 %? — and the least-squares error is reported beside it.
NCCL switches protocol with the size (LL for small messages: low latency, ~half the bandwidth; LL128;
Simple for large ones: full bandwidth, more latency), so the measured curve is the lower envelope of three
α-β lines and one line can only approximate it: the worst error sits where the protocols hand over.
**Bus bandwidth** is nccl-tests' definition (PERFORMANCE.md): algbw = n / t, busbw = algbw · 2(N−1)/N for
all-reduce — the per-link rate, comparable with the link's datasheet whatever N is.

Measuring: NCCL reads ``NCCL_ALGO`` when the communicator is created, so each algorithm is a separate run
(``python -m phase6_tensor_parallel.allreduce_study --algo Ring`` under torchrun, or ``run_study`` which launches
one torchrun per algorithm). Over gloo (CPU) ``--algo`` is ignored: that path is a smoke run of the code only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

KB, MB = 1024, 1024 * 1024
ALGOS = ("Ring", "Tree")


def sizes_bytes(lo: int = KB, hi: int = 256 * MB, factor: int = 4) -> list[int]:
    """Message sizes from ``lo`` to ``hi`` (inclusive), each ``factor``× the last."""
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= factor
    return out


def model_terms(algo: str, n_bytes: float, world: int) -> tuple[float, float]:
    """``(coefficient of α, coefficient of β)`` of the algorithm's time for ``n_bytes`` on ``world`` ranks."""
    if algo == "Ring":
        return 2.0 * (world - 1), 2.0 * (world - 1) / world * n_bytes
    if algo == "Tree":
        return 2.0 * math.ceil(math.log2(world)), 2.0 * n_bytes
    raise ValueError(f"unknown all-reduce algorithm {algo!r}: choose one of {', '.join(ALGOS)}")


@dataclass
class AlphaBeta:
    algo: str
    world: int
    alpha_s: float  # seconds per hop
    beta_s_per_byte: float  # seconds per byte on one link

    def predict(self, n_bytes: float) -> float:
        a, b = model_terms(self.algo, n_bytes, self.world)
        return a * self.alpha_s + b * self.beta_s_per_byte

    @property
    def link_gbps(self) -> float:
        return 1.0 / self.beta_s_per_byte / 1e9 if self.beta_s_per_byte > 0 else float("inf")


def fit(algo: str, world: int, sizes: list[int], seconds: list[float]) -> AlphaBeta:
    """Least squares on relative error: minimise Σ ((a_i·α + b_i·β) / t_i − 1)²."""
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError("fit needs at least two (size, time) pairs of equal length")
    terms = np.array([model_terms(algo, n, world) for n in sizes], dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    # Scale the columns so α (~1e-5) and β (~1e-11) are solved with equal conditioning.
    design = terms / t[:, None]
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    coef, *_ = np.linalg.lstsq(design / scale, np.ones_like(t), rcond=None)
    alpha, beta = coef / scale
    return AlphaBeta(algo, world, float(alpha), float(beta))


def _ternary_min(f, lo: float, hi: float, steps: int = 80) -> float:
    """Argmin of a convex function of one variable on [lo, hi]."""
    for _ in range(steps):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(m1) <= f(m2):
            hi = m2
        else:
            lo = m1
    return (lo + hi) / 2


def fit_minimax(algo: str, world: int, sizes: list[int], seconds: list[float]) -> AlphaBeta:
    """α, β ≥ 0 minimising the worst relative error max_i |a_i·α + b_i·β − t_i| / t_i.

    The worst error is convex in (α, β) (a maximum of absolute values of affine functions), and so is its
    minimum over β for each α: two nested ternary searches over the box where either term alone stays
    below the largest measured time find the optimum without an LP solver.
    """
    if len(sizes) != len(seconds) or len(sizes) < 2:
        raise ValueError("fit needs at least two (size, time) pairs of equal length")
    terms = np.array([model_terms(algo, n, world) for n in sizes], dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    a, b = terms[:, 0] / t, terms[:, 1] / t  # relative residual: a·α + b·β − 1
    a_hi = 1.0 / a[a > 0].min() if (a > 0).any() else 0.0  # beyond these a single point is > 100 % off
    b_hi = 1.0 / b[b > 0].min() if (b > 0).any() else 0.0

    def worst(u: float, v: float) -> float:  # u, v: α and β as fractions of their upper bounds
        return float(np.abs(a * u * a_hi + b * v * b_hi - 1.0).max())

    def best_v(u: float) -> float:
        return _ternary_min(lambda v: worst(u, v), 0.0, 1.0)

    u = _ternary_min(lambda u: worst(u, best_v(u)), 0.0, 1.0)
    return AlphaBeta(algo, world, float(u * a_hi), float(best_v(u) * b_hi))


def model_error(model: AlphaBeta, sizes: list[int], seconds: list[float]) -> float:
    """Worst relative error of the fitted model over the measured sizes."""
    return max(abs(model.predict(n) - t) / t for n, t in zip(sizes, seconds, strict=True))


def bus_bandwidth_gbps(n_bytes: float, seconds: float, world: int) -> float:
    """nccl-tests' busbw for all-reduce: (n / t) · 2(N−1)/N, in GB/s."""
    return n_bytes / seconds * 2.0 * (world - 1) / world / 1e9


# --- measuring (inside an initialised process group) ------------------------------------------------

def calls_per_sample(n_bytes: int) -> int:
    """All-reduces per timed sample: enough that one sample lasts well above the timer's resolution."""
    return 50 if n_bytes <= MB else 20 if n_bytes <= 16 * MB else 5


def measure(sizes: list[int], *, device: str = "cuda", dtype: torch.dtype = torch.float32,
            warmup: int = 2, iters: int = 10, graph: bool | None = None) -> tuple[list[float], str]:
    """Seconds of one ``dist.all_reduce`` per size, measured the way nccl-tests does, and the method used.

    One event pair around a single call times Python and the launch (tens of µs) rather than NCCL: a 1 KB
    all-reduce on NVLink takes a few µs. So each sample brackets k back-to-back all-reduces, per call =
    total / k; on CUDA (``graph``, the default there) the k calls are captured once in a CUDA graph and the
    sample is one replay, so no host work sits between them (nccl-tests' ``-G``). A barrier before each size
    starts the ranks together; the first call of each size is eager and its sum is checked.
    """
    import torch.distributed as dist

    from module0_profiling.timing import capture_cuda_graph, time_fn

    cuda = torch.device(device).type == "cuda"
    graph = cuda if graph is None else graph
    elem = torch.finfo(dtype).bits // 8
    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for n in sizes:
        x = torch.full((max(n // elem, 1),), float(rank + 1), dtype=dtype, device=device)
        dist.barrier()
        dist.all_reduce(x)
        if x[0].item() != world * (world + 1) / 2:
            raise RuntimeError(f"all-reduce of {n} bytes gave {x[0].item()}, expected {world * (world + 1) / 2}")
        x.zero_()  # repeated in-place sums stay finite
        k = calls_per_sample(n)

        def calls(x=x, k=k):
            for _ in range(k):
                dist.all_reduce(x)

        if graph:
            g = capture_cuda_graph(calls, warmup=1)
            out.append(time_fn(g.replay, warmup=warmup, iters=iters, device=device).median / k)
            del g
        else:
            out.append(time_fn(lambda x=x: dist.all_reduce(x), warmup=warmup, iters=iters, device=device,
                               calls_per_sample=k).median)
    return out, ("CUDA graph of k calls per sample" if graph else "k eager calls per sample")


def study_rank(group, sizes: list[int], algo: str, device: str, iters: int) -> dict:
    """What one rank measures (the spawned/torchrun entry point)."""
    seconds, method = measure(sizes, device=device, iters=iters, warmup=min(2, iters))
    return {"algo": algo, "world": group.world, "sizes": sizes, "seconds": seconds, "method": method}


def analyse(run: dict) -> dict:
    """Both fits, their worst errors and bus bandwidth for one measured run (``study_rank``'s result).

    ``fit``/``model_error`` are the minimax fit's (the P6.4 metric); ``fit_lsq``/``model_error_lsq`` the
    least-squares one's.
    """
    ab = fit_minimax(run["algo"], run["world"], run["sizes"], run["seconds"])
    lsq = fit(run["algo"], run["world"], run["sizes"], run["seconds"])
    busbw = [bus_bandwidth_gbps(n, t, run["world"]) for n, t in zip(run["sizes"], run["seconds"], strict=True)]
    return {**run, "fit": asdict(ab), "link_gbps": ab.link_gbps,
            "model_error": model_error(ab, run["sizes"], run["seconds"]),
            "fit_lsq": asdict(lsq), "model_error_lsq": model_error(lsq, run["sizes"], run["seconds"]),
            "busbw_gbps": busbw}


def run_study(world: int = 2, algos: tuple[str, ...] = ALGOS, *, sizes: list[int] | None = None,
              iters: int = 20, device: str = "cuda", timeout_s: float = 300.0) -> list[dict]:
    """One torchrun per algorithm (NCCL_ALGO set in its environment); returns ``analyse`` of each.

    ``device="cpu"`` runs gloo (the algorithm name is then only a label): a smoke of this driver.
    """
    import tempfile

    sizes = sizes or sizes_bytes()
    results = []
    for algo in algos:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
                   "-m", "phase6_tensor_parallel.allreduce_study", "--algo", algo, "--device", device,
                   "--iters", str(iters), "--out", f.name, "--sizes", ",".join(map(str, sizes))]
            subprocess.run(cmd, check=True, timeout=timeout_s, env={**os.environ, "NCCL_ALGO": algo})
            results.append(analyse(json.loads(open(f.name).read())))
    return results


def human_bytes(n: int) -> str:
    return f"{n / MB:.0f} MB" if n >= MB else f"{n / KB:.0f} KB"


def table(results: list[dict]) -> str:
    """Markdown: one row per size, measured vs the minimax model (and its error) and busbw per algorithm."""
    head = "| size | " + " | ".join(f"{r['algo']} µs | model µs | error | busbw GB/s" for r in results) + " |"
    lines = [head, "|" + "---|" * (1 + 4 * len(results))]
    for i, n in enumerate(results[0]["sizes"]):
        cells = []
        for r in results:
            model, t = AlphaBeta(**r["fit"]).predict(n), r["seconds"][i]
            cells += [f"{t * 1e6:.1f}", f"{model * 1e6:.1f}", f"{100 * (model - t) / t:+.0f} %",
                      f"{r['busbw_gbps'][i]:.1f}"]
        lines.append(f"| {human_bytes(n)} | " + " | ".join(cells) + " |")
    fits = []
    for r in results:
        line = (f"{r['algo']}: α = {r['fit']['alpha_s'] * 1e6:.2f} µs, 1/β = {r['link_gbps']:.1f} GB/s, worst error "
                f"{100 * r['model_error']:.1f} % (minimax fit)")
        if "fit_lsq" in r:
            lsq = AlphaBeta(**r["fit_lsq"])
            line += (f"; least squares: α = {lsq.alpha_s * 1e6:.2f} µs, 1/β = {lsq.link_gbps:.1f} GB/s, worst error "
                     f"{100 * r['model_error_lsq']:.1f} %")
        fits.append(line)
    method = results[0].get("method")
    return "\n".join(lines) + "\n\n" + "\n\n".join(fits) + (f"\n\nTiming: {method}." if method else "")


def plot(results: list[dict], path: str) -> str | None:
    """Measured points and fitted lines, log-log; ``None`` when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results):
        ab, color = AlphaBeta(**r["fit"]), f"C{i}"  # one colour per algorithm: points and their line
        ax.loglog(r["sizes"], [t * 1e6 for t in r["seconds"]], "o", color=color, label=f"{r['algo']} measured")
        ax.loglog(r["sizes"], [ab.predict(n) * 1e6 for n in r["sizes"]], "-", color=color,
                  label=f"{r['algo']} α-β fit (minimax)")
    ax.set_xlabel("message bytes")
    ax.set_ylabel("all-reduce µs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one all-reduce sweep (run under torchrun; NCCL_ALGO from --algo)")
    ap.add_argument("--algo", default="Ring", choices=ALGOS)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sizes", default=None, help="comma-separated bytes (default 1 KB..256 MB ×4)")
    ap.add_argument("--out", required=True, help="JSON file rank 0 writes")
    args = ap.parse_args(argv)
    os.environ.setdefault("NCCL_ALGO", args.algo)  # read by NCCL at communicator creation
    from phase6_tensor_parallel.dist_env import init_distributed, shutdown

    group = init_distributed(args.device)
    try:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes_bytes()
        run = study_rank(group, sizes, args.algo, args.device, args.iters)
    finally:
        shutdown()
    if group.rank == 0:
        with open(args.out, "w") as f:
            json.dump(run, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
