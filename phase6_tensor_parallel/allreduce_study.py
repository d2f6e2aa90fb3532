"""All-reduce on N ranks, 1 KB–256 MB: measure, fit the α-β model, compare Ring and Tree, bus bandwidth.

The α-β (Hockney) model prices a message of n bytes at ``α + n·β``: α the per-hop latency (launch, sync,
PCIe/NVLink round trip), β the inverse link bandwidth. An all-reduce is a schedule of such hops:

- **Ring** (reduce-scatter then all-gather): ``t_ring(n) = 2(N−1)·α + 2(N−1)/N · n·β``
- **Tree** (NCCL's double binary tree, pipelined): ``t_tree(n) = 2⌈log2 N⌉·α + 2 · n·β``

At N = 2 both have the same latency term; Tree's bandwidth term is 2× Ring's, which is why NCCL picks Ring
for large messages and Tree (lower latency at large N) for small ones. NCCL also picks one of three
protocols (LL, LL128, Simple) per message, each its own α-β line, so the measured curve is the LOWER
ENVELOPE of three lines and one line can only approximate it: ``analyse`` fits each protocol's line on
a forced-protocol sweep and predicts with their minimum (``envelope``, P6.4's metric) beside the single
line (the lesson is the gap). Fits minimise relative error (timings span five decades). Each (algorithm,
protocol) is a separate torchrun (``run_study``): NCCL reads ``NCCL_ALGO``/``NCCL_PROTO`` at communicator
creation. Over gloo (CPU) it is a smoke run of the code only. Tables and plot: ``allreduce_report``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

KB, MB = 1024, 1024 * 1024
ALGOS = ("Ring", "Tree")
PROTOCOLS = ("LL", "LL128", "Simple")  # NCCL_PROTO values, lowest latency first


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
    """nccl-tests' busbw for all-reduce (PERFORMANCE.md): (n / t) · 2(N−1)/N, in GB/s — the per-link rate,
    comparable with the link's datasheet whatever N is."""
    return n_bytes / seconds * 2.0 * (world - 1) / world / 1e9


# --- measuring (inside an initialised process group) ------------------------------------------------

def calls_per_sample(n_bytes: int) -> int:
    """All-reduces per timed sample: enough that one sample lasts well above the timer's resolution."""
    return 50 if n_bytes <= MB else 20 if n_bytes <= 16 * MB else 5


def measure(sizes: list[int], *, device: str = "cuda", dtype: torch.dtype = torch.float32,
            warmup: int = 2, iters: int = 10, graph: bool | None = None,
            all_reduce: Callable | None = None) -> tuple[list[float], str]:
    """Seconds of one ``dist.all_reduce`` (or ``all_reduce``, e.g. the one-shot kernel's) per size, measured the
    way nccl-tests does, and the method used.

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
    all_reduce = all_reduce or dist.all_reduce
    elem = torch.finfo(dtype).bits // 8
    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for n in sizes:
        x = torch.full((max(n // elem, 1),), float(rank + 1), dtype=dtype, device=device)
        dist.barrier()
        all_reduce(x)
        if x[0].item() != world * (world + 1) / 2:
            raise RuntimeError(f"all-reduce of {n} bytes gave {x[0].item()}, expected {world * (world + 1) / 2}")
        x.zero_()  # repeated in-place sums stay finite
        k = calls_per_sample(n)

        def calls(x=x, k=k):
            for _ in range(k):
                all_reduce(x)

        if graph:
            g = capture_cuda_graph(calls, warmup=1)
            out.append(time_fn(g.replay, warmup=warmup, iters=iters, device=device).median / k)
            del g
        else:
            out.append(time_fn(lambda x=x: all_reduce(x), warmup=warmup, iters=iters, device=device,
                               calls_per_sample=k).median)
    return out, ("CUDA graph of k calls per sample" if graph else "k eager calls per sample")


def study_rank(group, sizes: list[int], algo: str, device: str, iters: int, oneshot: bool = False) -> dict:
    """What one rank measures (the spawned/torchrun entry point). ``oneshot``: the one-shot kernel
    (``oneshot.py``, CUDA only) instead of NCCL, on the sizes it takes (labelled "OneShot")."""
    reduce = None
    if oneshot:
        from phase6_tensor_parallel.dist_env import local_device
        from phase6_tensor_parallel.oneshot import DEFAULT_MAX_BYTES, OneShotAllReduce

        sizes = [n for n in sizes if n <= DEFAULT_MAX_BYTES and n % 16 == 0]
        reduce, algo = OneShotAllReduce(group, local_device(device, group), max(sizes)), "OneShot"
    seconds, method = measure(sizes, device=device, iters=iters, warmup=min(2, iters), all_reduce=reduce)
    if reduce is not None:
        reduce.close()
    return {"algo": algo, "world": group.world, "sizes": sizes, "seconds": seconds, "method": method}


def envelope(lines: dict[str, AlphaBeta], n_bytes: float) -> tuple[float, str]:
    """NCCL's tuner: the cheapest protocol's predicted time for ``n_bytes``, and that protocol."""
    if not lines:
        raise ValueError("the envelope needs at least one fitted protocol line")
    name = min(lines, key=lambda p: lines[p].predict(n_bytes))
    return lines[name].predict(n_bytes), name


def protocol_lines(run: dict) -> dict[str, AlphaBeta]:
    """The fitted line of every protocol that ran (``analyse``'s result); empty when none did."""
    return {p: AlphaBeta(**r["fit"]) for p, r in (run.get("protocols") or {}).items() if "fit" in r}


def predictor(run: dict) -> Callable[[float], float]:
    """Seconds for n bytes from an analysed run: the protocol envelope where protocols were measured,
    else the single minimax line (gloo, or results saved before the protocol runs existed)."""
    lines = protocol_lines(run)
    if lines:
        return lambda n: envelope(lines, n)[0]
    return AlphaBeta(**run["fit"]).predict


def analyse(run: dict) -> dict:
    """Fits, worst errors and bus bandwidth for one algorithm's runs (``study_rank``'s result, plus
    ``protocols``: name -> that protocol's forced run or ``{"skipped": reason}``).

    NCCL's tuner prices every (algorithm, protocol) pair as latency + size / bandwidth and runs the
    cheapest: LL (8-byte stores with an inline flag: lowest latency, about half the bandwidth), LL128
    (128-byte lines, most of the bandwidth), Simple (bulk copies and a fence per chunk: full bandwidth,
    most latency). So each protocol's line is fitted (minimax) on its own forced run, never on the default
    run, and the default run is predicted as the minimum over those lines. A protocol that NCCL refused or
    whose run failed is left out of the envelope.

    Single line on the default run: ``fit``/``model_error`` (minimax), ``fit_lsq``/``model_error_lsq``.
    Per protocol: its own minimax ``fit``, ``model_error`` and ``link_gbps`` on its own run. Envelope (when
    at least one protocol ran): ``envelope_seconds``/``envelope_protocol`` per size of the default run and
    ``envelope_error``, the worst relative error vs the default run (P6.4's metric).
    """
    algo, world, sizes, seconds = run["algo"], run["world"], run["sizes"], run["seconds"]
    ab = fit_minimax(algo, world, sizes, seconds)
    lsq = fit(algo, world, sizes, seconds)
    busbw = [bus_bandwidth_gbps(n, t, world) for n, t in zip(sizes, seconds, strict=True)]
    out = {**run, "fit": asdict(ab), "link_gbps": ab.link_gbps, "model_error": model_error(ab, sizes, seconds),
           "fit_lsq": asdict(lsq), "model_error_lsq": model_error(lsq, sizes, seconds), "busbw_gbps": busbw}
    if "protocols" not in run:
        return out
    protos = {}
    for name, pr in run["protocols"].items():
        if "skipped" in pr:
            protos[name] = {"skipped": pr["skipped"]}
            continue
        line = fit_minimax(algo, world, pr["sizes"], pr["seconds"])
        protos[name] = {**pr, "fit": asdict(line), "link_gbps": line.link_gbps,
                        "model_error": model_error(line, pr["sizes"], pr["seconds"])}
    out["protocols"] = protos
    lines = protocol_lines(out)
    if lines:
        pred = [envelope(lines, n) for n in sizes]
        out["envelope_seconds"] = [p for p, _ in pred]
        out["envelope_protocol"] = [name for _, name in pred]
        out["envelope_error"] = max(abs(p - t) / t for (p, _), t in zip(pred, seconds, strict=True))
    return out


class ProtocolRunFailed(RuntimeError):
    """A forced-protocol sweep that NCCL refused, crashed or timed out (recorded, not raised further)."""


def failure_reason(log: str) -> str:
    """One line saying why a torchrun sweep failed, from its output: NCCL's own last error if it printed one."""
    lines = [re.sub(r"^\[(?:rank|default)\d*\]:\s*", "", s).strip() for s in log.splitlines()]
    lines = [s for s in lines if s]
    for i, s in enumerate(lines):
        if s.startswith("Last error:") and i + 1 < len(lines):
            return lines[i + 1][:300]
    for s in lines:
        if "NCCL WARN" in s:
            return s.split("NCCL WARN", 1)[1].strip()[:300]
    for s in lines:
        if re.match(r"[\w.]*(Error|Exception)\b:?", s):
            return s[:300]
    return lines[-1][:300] if lines else "no output"


def torchrun_sweep(world: int, algo: str, proto: str | None, *, sizes: list[int], iters: int, device: str,
                   timeout_s: float) -> dict:
    """One torchrun of ``main`` with ``NCCL_ALGO=algo`` and, when ``proto`` is given, ``NCCL_PROTO=proto``
    (unset otherwise, so NCCL picks). The default sweep's failure raises (``CalledProcessError``,
    ``TimeoutExpired``); a forced protocol's raises ``ProtocolRunFailed`` with the reason."""
    import tempfile

    env = {**os.environ, "NCCL_ALGO": algo}
    env.pop("NCCL_PROTO", None)
    if proto is not None:
        env["NCCL_PROTO"] = proto
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
               "-m", "phase6_tensor_parallel.allreduce_study", "--algo", algo, "--device", device,
               "--iters", str(iters), "--out", f.name, "--sizes", ",".join(map(str, sizes))]
        cmd += ["--proto", proto] if proto is not None else []
        capture = subprocess.PIPE if proto is not None else None  # a forced run's output gives its reason
        # Own session: on a timeout the whole tree (torchrun and its ranks) is killed, not only torchrun.
        proc = subprocess.Popen(cmd, env=env, stdout=capture, stderr=subprocess.STDOUT if capture else None,
                                text=True, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if proto is None:
                raise
            raise ProtocolRunFailed(f"timed out after {timeout_s:.0f} s") from None
        finally:
            if proc.poll() is None:  # interrupted: take the ranks down too
                os.killpg(proc.pid, signal.SIGKILL)
        if log:
            sys.stderr.write(log[-4000:])  # the forced run's tail stays in the check's log
        if proc.returncode != 0:
            if proto is None:
                raise subprocess.CalledProcessError(proc.returncode, cmd)
            raise ProtocolRunFailed(f"exit status {proc.returncode}: {failure_reason(log or '')}")
        return json.loads(open(f.name).read())


def run_study(world: int = 2, algos: tuple[str, ...] = ALGOS, *, sizes: list[int] | None = None,
              iters: int = 20, device: str = "cuda", timeout_s: float = 300.0,
              protocols: tuple[str, ...] | None = None, protocol_iters: int = 8,
              protocol_timeout_s: float | None = None, launch: Callable[..., dict] = torchrun_sweep) -> list[dict]:
    """Per algorithm: the default sweep (NCCL picks the protocol), then one sweep per forced protocol
    (``protocols``, default all three on CUDA, ``protocol_iters`` iterations: they only fit a line, and
    ``protocol_timeout_s``, default ``timeout_s``); ``analyse`` of each.

    ``device="cpu"`` runs gloo (the algorithm name is then only a label, no protocol is forced): a smoke of
    this driver. ``launch`` runs one sweep (``torchrun_sweep``; the tests pass a fake).
    """
    sizes = sizes or sizes_bytes()
    protocols = () if device != "cuda" else PROTOCOLS if protocols is None else protocols
    results = []
    for algo in algos:
        run = launch(world, algo, None, sizes=sizes, iters=iters, device=device, timeout_s=timeout_s)
        if protocols:
            run["protocols"] = {}
        for proto in protocols:
            try:
                pr = launch(world, algo, proto, sizes=sizes, iters=protocol_iters, device=device,
                            timeout_s=protocol_timeout_s or timeout_s)
                run["protocols"][proto] = pr
            except ProtocolRunFailed as e:
                print(f"[allreduce_study] {algo}/{proto} skipped: {e}", file=sys.stderr, flush=True)
                run["protocols"][proto] = {"skipped": str(e)}
        results.append(analyse(run))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one all-reduce sweep (run under torchrun; NCCL_ALGO from --algo)")
    ap.add_argument("--algo", default="Ring", choices=ALGOS)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--proto", default=None, choices=PROTOCOLS, help="force NCCL_PROTO (default: NCCL picks)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sizes", default=None, help="comma-separated bytes (default 1 KB..256 MB ×4)")
    ap.add_argument("--out", required=True, help="JSON file rank 0 writes")
    ap.add_argument("--oneshot", action="store_true",
                    help="time the one-shot CUDA-IPC all-reduce (oneshot.py) instead of NCCL, sizes up to 512 KB")
    args = ap.parse_args(argv)
    os.environ.setdefault("NCCL_ALGO", args.algo)  # read by NCCL at communicator creation
    if args.proto is not None:
        os.environ.setdefault("NCCL_PROTO", args.proto)
    from phase6_tensor_parallel.dist_env import init_distributed, shutdown

    group = init_distributed(args.device)
    try:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes_bytes()
        run = study_rank(group, sizes, args.algo, args.device, args.iters, oneshot=args.oneshot)
        run["proto"] = args.proto
    finally:
        shutdown()
    if group.rank == 0:
        with open(args.out, "w") as f:
            json.dump(run, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
