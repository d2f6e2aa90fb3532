"""Macro profile of a region: which kernels ran, how busy the GPU was, what the launches cost.

``profile_region(fn)`` runs ``fn`` under ``torch.profiler`` and summarises the Chrome trace it
exports (the same file Perfetto or chrome://tracing opens):

- kernel table: name, calls, total and mean time, share of kernel time;
- GPU busy % = union of kernel/memcpy/memset intervals inside the region / the region's wall time
  (white space on the Nsight Systems timeline is what this number misses);
- launch count, mean gap between consecutive kernels, and the mean CPU time of one launch call
  (``cudaLaunchKernel`` & co.): at batch 1 the CPU's launch rate, not the GPU, sets the pace.

On a CPU-only machine the table lists CPU operators and GPU busy % is absent (with the reason).

``run_ncu`` wraps Nsight Compute (``--clock-control none`` so the card's clocks are left as found)
and parses its CSV; ``nsys_status`` says whether Nsight Systems is usable.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep libkineto's start/stop chatter off the terminal
REGION = "titaninfer_region"
GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cudaLaunchKernelExC",
                "cuLaunchKernelEx")


@dataclass
class KernelStat:
    name: str
    calls: int
    total_s: float
    mean_s: float
    share: float  # of all kernel time in the region


@dataclass
class TraceSummary:
    device_kind: str  # "cuda": kernels are GPU kernels; "cpu": CPU operators
    wall_s: float  # the region's wall time
    busy_s: float | None  # union of GPU activity inside the region (None on CPU)
    launches: int  # GPU kernels (or CPU ops) in the region
    launch_calls: int  # CPU-side launch API calls
    launch_overhead_s: float | None  # mean CPU duration of one launch API call
    mean_gap_s: float | None  # mean idle time between consecutive GPU kernels
    iters: int = 1
    kernels: list[KernelStat] = field(default_factory=list)
    chrome_trace: str | None = None
    gpu_span_s: float | None = None  # first GPU activity start to last end inside the region
    event_s: float | None = None  # CUDA-event time of the same region, recorded inside the profiled run

    @property
    def gpu_busy(self) -> float | None:
        if self.busy_s is None or self.wall_s <= 0:
            return None
        return min(1.0, self.busy_s / self.wall_s)

    def top(self, n: int = 3) -> list[KernelStat]:
        return self.kernels[:n]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpu_busy"] = self.gpu_busy
        return d


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping [start, end) intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def mean_gap(intervals: list[tuple[float, float]]) -> float | None:
    """Mean idle time between consecutive intervals (overlaps count as zero gap)."""
    if len(intervals) < 2:
        return None
    ordered = sorted(intervals)
    gaps, end = [], ordered[0][1]
    for start, stop in ordered[1:]:
        gaps.append(max(0.0, start - end))
        end = max(end, stop)
    return sum(gaps) / len(gaps)


def _outermost(ops: list[dict]) -> list[dict]:
    """CPU operators not nested inside another (per thread), so their times add up without double counting."""
    out, stack_end = [], {}
    for e in sorted(ops, key=lambda e: (e.get("tid"), e["ts"], -e["dur"])):
        tid = e.get("tid")
        if e["ts"] >= stack_end.get(tid, float("-inf")):
            out.append(e)
            stack_end[tid] = e["ts"] + e["dur"]
    return out


def summarize_chrome_trace(trace: dict, *, iters: int = 1, path: str | None = None) -> TraceSummary:
    """Summarise a Chrome trace (``{"traceEvents": [...]}``, times in µs) over the marked region."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    regions = [e for e in events if e.get("name") == REGION and e.get("cat") in ("user_annotation", "cpu_op")]
    if regions:
        r0 = min(e["ts"] for e in regions)
        r1 = max(e["ts"] + e["dur"] for e in regions)
    else:  # no marker: the whole trace
        r0 = min((e["ts"] for e in events), default=0.0)
        r1 = max((e["ts"] + e["dur"] for e in events), default=0.0)
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES and e["ts"] < r1 and e["ts"] + e["dur"] > r0]
    # A region's GPU work may finish after the CPU marker ends (asynchrony): the wall time runs to
    # the later of the two, so busy % is never over-counted.
    wall_end = max([r1] + [e["ts"] + e["dur"] for e in gpu])
    wall_us = wall_end - r0
    launch_events = [
        e for e in events if e.get("cat") == "cuda_runtime" and e.get("name", "").startswith(LAUNCH_CALLS)
    ]
    launch_events = [e for e in launch_events if r0 <= e["ts"] <= r1]
    if gpu:
        kind = "cuda"
        items = gpu
        intervals = [(e["ts"], e["ts"] + e["dur"]) for e in gpu]
        busy = union_length(intervals) / 1e6
        span = (max(e for _, e in intervals) - min(s for s, _ in intervals)) / 1e6
        gap = mean_gap(intervals)
        gap_s = gap / 1e6 if gap is not None else None
    else:
        kind = "cpu"
        items = _outermost([e for e in events
                            if e.get("cat") == "cpu_op" and r0 <= e["ts"] <= r1 and e["name"] != REGION])
        busy, gap_s, span = None, None, None
    totals: dict[str, list[float]] = defaultdict(list)
    for e in items:
        totals[e["name"]].append(e["dur"] / 1e6)
    grand = sum(sum(v) for v in totals.values()) or 1.0
    kernels = sorted(
        (KernelStat(name, len(v), sum(v), sum(v) / len(v), sum(v) / grand) for name, v in totals.items()),
        key=lambda k: -k.total_s,
    )
    overhead = (
        sum(e["dur"] for e in launch_events) / len(launch_events) / 1e6 if launch_events else None
    )
    return TraceSummary(
        device_kind=kind,
        wall_s=wall_us / 1e6,
        busy_s=busy,
        launches=len(items),
        launch_calls=len(launch_events),
        launch_overhead_s=overhead,
        mean_gap_s=gap_s,
        iters=iters,
        kernels=kernels,
        chrome_trace=path,
        gpu_span_s=span,
    )


def profile_region(
    fn: Callable[[], Any], *, iters: int = 1, warmup: int = 1, chrome_trace: str | Path | None = None
) -> TraceSummary:
    """Profile ``iters`` calls of ``fn`` (after ``warmup`` unprofiled calls) and summarise them."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from module0_profiling.timing import synchronize

    for _ in range(warmup):
        fn()
    synchronize()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    events = None
    if torch.cuda.is_available():
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
    with profile(activities=activities) as prof:
        with record_function(REGION):
            if events:
                events[0].record()
            for _ in range(iters):
                fn()
            if events:
                events[1].record()
            synchronize()
    keep = chrome_trace is not None
    if chrome_trace is None:
        fd, tmp = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        chrome_trace = tmp
    prof.export_chrome_trace(str(chrome_trace))
    with open(chrome_trace) as f:
        data = json.load(f)
    if not keep:
        os.unlink(chrome_trace)
    summary = summarize_chrome_trace(data, iters=iters, path=str(chrome_trace) if keep else None)
    if events:
        summary.event_s = events[0].elapsed_time(events[1]) / 1e3
    return summary


# ----------------------------------------------------------------------------- Nsight tools


@dataclass
class NcuKernel:
    name: str
    dram_pct: float | None  # DRAM throughput, % of peak sustained
    sm_pct: float | None  # SM (compute) throughput, % of peak sustained
    occupancy_pct: float | None  # achieved occupancy (active warps / max)
    registers: int | None  # registers per thread
    duration_s: float | None
    dram_read_bytes: float | None = None  # bytes read from DRAM (what a kernel really costs in HBM traffic)
    load_sectors: float | None = None  # 32-byte L1 sectors of global loads (uncoalesced access multiplies them)


NCU_METRICS = {
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram_pct",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy_pct",
    "launch__registers_per_thread": "registers",
    "gpu__time_duration.sum": "duration_s",
    "dram__bytes_read.sum": "dram_read_bytes",
    "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum": "load_sectors",
}
BYTE_UNITS = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12}


def ncu_status() -> str | None:
    """None when ncu is usable here, else the reason it is not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if shutil.which("ncu") is None:
        return "ncu (Nsight Compute) is not on PATH"
    return None


def nsys_status() -> str | None:
    """None when nsys is usable here, else the reason it is not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if shutil.which("nsys") is None:
        return "nsys (Nsight Systems) is not on PATH; the torch.profiler trace above gives the same timeline"
    return None


def parse_ncu_csv(text: str) -> list[NcuKernel]:
    """Parse ``ncu --csv --page raw``-less default output (one row per kernel × metric)."""
    start = text.find('"ID"')
    if start < 0:
        return []
    rows = list(csv.DictReader(io.StringIO(text[start:])))
    kernels: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for row in rows:
        key = row.get("ID", "") + "|" + row.get("Kernel Name", "")
        if key not in kernels:
            kernels[key] = {"name": row.get("Kernel Name", "?")}
            order.append(key)
        field_name = NCU_METRICS.get(row.get("Metric Name", ""))
        if field_name is None:
            continue
        raw = (row.get("Metric Value") or "").replace(",", "")
        try:
            value = float(raw)
        except ValueError:
            continue
        unit = (row.get("Metric Unit") or "").strip()
        if field_name == "duration_s":
            value *= {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0}.get(unit, 1e-9)
        if field_name == "dram_read_bytes":
            value *= BYTE_UNITS.get(unit, 1.0)
        if field_name == "registers":
            value = int(value)
        kernels[key][field_name] = value
    out = []
    for key in order:
        k = kernels[key]
        out.append(NcuKernel(**{f: k.get(f) for f in ("name", *NCU_METRICS.values())}))
    return out


NVTX_RANGE = "titaninfer"


def run_ncu(
    python_code: str, *, kernel_regex: str | None = None, nvtx_range: str | None = None,
    launch_count: int = 10, timeout_s: int = 300,
) -> list[NcuKernel]:
    """Run ``python -c python_code`` under ncu and return the metrics of the profiled kernels.

    When the code opens the NVTX range ``"titaninfer"`` (``with torch.cuda.nvtx.range("titaninfer"):``)
    only kernels inside it are profiled, so set-up kernels (random init, copies) stay out; otherwise
    pass ``kernel_regex`` or ``nvtx_range``, or the first ``launch_count`` kernels are profiled.
    """
    if nvtx_range is None and (f'"{NVTX_RANGE}"' in python_code or f"'{NVTX_RANGE}'" in python_code):
        nvtx_range = NVTX_RANGE
    reason = ncu_status()
    if reason:
        raise RuntimeError(reason)
    cmd = [
        "ncu", "--clock-control", "none", "--csv",
        "--metrics", ",".join(NCU_METRICS),
        "--launch-count", str(launch_count),
    ]
    if nvtx_range:
        cmd += ["--nvtx", "--nvtx-include", f"{nvtx_range}/"]
    if kernel_regex:
        cmd += ["--kernel-name", f"regex:{kernel_regex}"]
    cmd += [sys.executable, "-c", python_code]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"ncu failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-400:]}")
    kernels = parse_ncu_csv(proc.stdout)
    if not kernels:
        raise RuntimeError("ncu profiled no kernel; its output ends: "
                           + (proc.stdout + proc.stderr).strip()[-300:])
    return kernels


def ncu_section(result, python_code: str, **kw) -> None:
    """A bench's ncu section: ``result.ncu`` from ``run_ncu(python_code, **kw)``, or ``result.ncu_reason``
    saying why not (no GPU, no ncu, or ncu unable to read counters — a SKIP of the section, never a crash)."""
    reason = ncu_status()
    if reason:
        result.ncu_reason = reason
        return
    try:
        result.ncu = run_ncu(python_code, **kw)
    except Exception as e:  # noqa: BLE001 - present but unusable (permissions, a virtualised GPU, a timeout)
        result.ncu_reason = f"ncu failed: {e}"
