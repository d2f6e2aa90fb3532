"""The contract between a phase's ``bench.py``/``checks.py`` and the check runner.

A phase's ``bench.py`` exposes::

    def run(impl: str, size: str) -> BenchResult

``impl`` is ``"framework"``, ``"solution"`` or an importable module path; ``size`` is ``"full"``
(TinyLlama's shapes, GPU) or ``"small"`` (seconds on a CPU). ``run`` measures everything the
phase's targets need in ONE process, so every ratio compares numbers taken on the same machine
in the same minute.

A phase's ``checks.py`` exposes::

    TARGETS: list[Target]

Each target reads one or more metrics from ``BenchResult.metrics``. A metric that was not measured
(no GPU, a peer that does not import) is absent from ``metrics`` and its reason is in
``BenchResult.skipped``: the target is then SKIP with that reason — never PASS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class RooflinePoint:
    """One measured kernel or region placed on the roofline: counted work over measured time."""

    label: str
    flops: float
    bytes: float
    seconds: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9


@dataclass
class Comparison:
    """One row of the before/after table: a version of the same work and its measured time."""

    name: str
    seconds: float
    work_bytes: float | None = None  # bytes that must move, for % of copy bandwidth
    work_flops: float | None = None  # FLOPs that must be done, for % of matmul peak
    note: str = ""


@dataclass
class BenchResult:
    """Everything one bench run measured; the runner turns it into the table and the report."""

    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not measured
    comparisons: list[Comparison] = field(default_factory=list)
    roofline: list[RooflinePoint] = field(default_factory=list)
    trace: Any = None  # module0_profiling.trace.TraceSummary of the phase's main region, or None
    trace_region: str = ""  # what the trace covers, in words
    ncu: Any = None  # list[module0_profiling.trace.NcuKernel] or None
    ncu_reason: str = ""  # why ncu metrics are absent
    tables: dict[str, str] = field(default_factory=dict)  # extra markdown sections: title -> body
    notes: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)  # shapes, dtypes, model: shown in the report

    def skip(self, metric: str, reason: str) -> None:
        self.skipped[metric] = reason


@dataclass
class Target:
    """An acceptance target (a row of a phase's ``checks.TARGETS``), evaluated on a bench run's metrics.

    ``passes`` receives the metric values in the order of ``metrics``; ``show`` formats them for the
    'measured' column.
    """

    id: str
    description: str
    threshold: str
    metrics: Sequence[str]
    passes: Callable[..., bool]
    show: Callable[..., str] | None = None

    def evaluate(self, result: BenchResult) -> "Outcome":
        missing = [m for m in self.metrics if m not in result.metrics]
        if missing:
            reasons = sorted({result.skipped.get(m, f"metric '{m}' was not measured") for m in missing})
            return Outcome(self, SKIP, "—", "; ".join(reasons))
        values = [result.metrics[m] for m in self.metrics]
        shown = self.show(*values) if self.show else ", ".join(_fmt(v) for v in values)
        return Outcome(self, PASS if self.passes(*values) else FAIL, shown, "")


@dataclass
class Outcome:
    target: Target
    status: str
    measured: str
    reason: str

    @property
    def status_text(self) -> str:
        return f"{self.status} ({self.reason})" if self.reason else self.status


def _fmt(v: float) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}"


def pct(v: float) -> str:
    """Format a fraction as a percentage for the 'measured' column."""
    return f"{100 * v:.1f} %"


def times(v: float) -> str:
    """Format a ratio as a speed-up for the 'measured' column."""
    return f"{v:.2f}×"
