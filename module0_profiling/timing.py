"""Timing that a GPU engineer can trust: events on the device, warm-up, medians, rotation.

Device work is asynchronous, so a host clock around a launch measures the launch, not the kernel.
On CUDA we bracket the region with CUDA events on the current stream; on CPU we use
``time.perf_counter``. Every figure is the median of many repetitions with its spread, after a
warm-up that keeps compilation, autotuning and allocator growth out of the numbers. When the inputs
fit in L2 (50 MB on an H100), timing one buffer over and over measures the cache, not HBM: pass
several input sets and ``time_fn`` rotates among them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


@dataclass
class Timing:
    """Seconds per call: median and spread of ``n`` repetitions."""

    median: float
    p10: float
    p90: float
    mean: float
    n: int
    samples: list[float] = field(default_factory=list, repr=False)

    @property
    def best(self) -> float:
        """The fastest sample: what a version can do once noise (clocks, other work) is out of the way."""
        return min(self.samples) if self.samples else self.p10

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: differences between versions smaller than this are noise."""
        return (self.p90 - self.p10) / self.median if self.median else 0.0

    def __str__(self) -> str:
        return (f"{format_seconds(self.median)} (p10 {format_seconds(self.p10)}, "
                f"p90 {format_seconds(self.p90)}, n={self.n})")

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> "Timing":
        if not samples:
            raise ValueError("no timing samples")
        s = sorted(samples)
        return cls(
            median=statistics.median(s),
            p10=_quantile(s, 0.10),
            p90=_quantile(s, 0.90),
            mean=statistics.fmean(s),
            n=len(s),
            samples=list(samples),
        )


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already-sorted samples (numpy's default method)."""
    if len(sorted_samples) == 1:
        return sorted_samples[0]
    pos = q * (len(sorted_samples) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def format_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued device work; a no-op on CPU."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_fn(
    fn: Callable[..., Any],
    *,
    inputs: Sequence[Any] | None = None,
    warmup: int = 3,
    iters: int = 20,
    device: torch.device | str | None = None,
    calls_per_sample: int = 1,
) -> Timing:
    """Time ``fn`` and return seconds per call.

    - ``inputs``: when given, call ``fn(inputs[i % len(inputs)])``, rotating among input sets so a
      working set that fits in cache is not re-read from it.
    - ``device``: ``"cuda"`` times with CUDA events on the current stream (the default when CUDA is
      available); ``"cpu"`` times with ``perf_counter``.
    - ``calls_per_sample``: calls bracketed by one pair of timestamps (per-call figure = total / k);
      use it for work far shorter than a timer's resolution.
    """
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    call = _rotating_call(fn, inputs)
    for _ in range(warmup):
        call()
    synchronize("cuda" if use_cuda else "cpu")
    samples = []
    if use_cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i in range(iters):
            starts[i].record()
            for _ in range(calls_per_sample):
                call()
            ends[i].record()
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) / 1e3 / calls_per_sample for s, e in zip(starts, ends, strict=True)]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            for _ in range(calls_per_sample):
                call()
            samples.append((time.perf_counter() - t0) / calls_per_sample)
    return Timing.from_samples(samples)


def time_region(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time a whole region that synchronises itself (a generation loop, a served workload).

    Wall-clock per repetition, with a device synchronize before each clock read, so it includes the
    host work and the gaps a user waits through.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        fn()
        synchronize()
        samples.append(time.perf_counter() - t0)
    return Timing.from_samples(samples)


def _rotating_call(fn: Callable[..., Any], inputs: Sequence[Any] | None) -> Callable[[], Any]:
    if not inputs:
        return fn
    state = {"i": 0}

    def call() -> Any:
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return fn(x)

    return call


def capture_cuda_graph(fn: Callable[[], Any], *, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture ``fn`` (which reads and writes static tensors) into a CUDA graph.

    Warm-up runs on a side stream, as PyTorch requires, so lazy initialisation (cuBLAS handles,
    workspace allocation) happens before capture. Replaying the graph launches every kernel of
    ``fn`` with one CPU call: the remedy for launch-bound loops.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA graphs need a CUDA GPU; on CPU run the eager version instead")
    # A graph that reuses cuBLAS's workspace from eager mode breaks when another capture (inductor's,
    # transformers') later clears it: start the capture with fresh workspaces the graph owns.
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def time_graph(fn: Callable[[], Any], *, calls_per_sample: int = 50, iters: int = 3,
               warmup: int = 1) -> Timing:
    """Capture ``fn`` into a CUDA graph (``capture_cuda_graph``) and time its replays with ``time_fn``:
    seconds per replay, ``calls_per_sample`` replays back to back per sample (device time, no launch cost
    between kernels)."""
    graph = capture_cuda_graph(fn)
    return time_fn(graph.replay, warmup=warmup, iters=iters, calls_per_sample=calls_per_sample, device="cuda")
