"""The check runner: ``python -m module0_profiling.check <phase> [--impl NAME] [--size small|full]``.

Loads the phase's ``bench.py`` and ``checks.py``, runs the bench once, evaluates every target, prints
``target | threshold | measured | PASS / FAIL / SKIP (reason)``, writes the phase's report under
``reports/<phase>/`` and exits 1 on any FAIL (2 on a usage error: unknown phase, missing bench, an
IMPL that does not import).

Report names: ``<device>.md`` for the solution at full size (the committed report);
``<device>.<impl>.<size>.md`` for any other run, so a framework or small run never overwrites it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import time
from pathlib import Path

from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.impl import ImplError, load_impl
from module0_profiling.report import write_report
from module0_profiling.targets import FAIL, PASS, SKIP, BenchResult, Outcome

ROOT = Path(__file__).resolve().parent.parent
# The engine's package: the checkout's ``shared/``, installed from a wheel as ``titaninfer``.
ENGINE = "shared" if (ROOT / "shared").is_dir() else "titaninfer"
PHASES = [
    "module0_profiling",
    "phase0_prototype",
    "phase1_rust_memory",
    "phase2_rope_cuda",
    "phase3_paged_attention",
    "phase4_scheduler",
    "phase5_quantization",
    "phase6_tensor_parallel",
    "phase7_dit_parallel",
    ENGINE,
]
ALIASES = {"module0": "module0_profiling", "engine": ENGINE}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def resolve_phase(name: str) -> str:
    """Accept the directory name, its short form (``phase2``, ``module0``) or ``engine``."""
    name = name.strip().rstrip("/")
    if name in PHASES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    matches = [p for p in PHASES if p.split("_")[0] == name]
    if len(matches) == 1:
        return matches[0]
    names = ["module0"] + [p.split("_")[0] for p in PHASES[1:-1]] + ["engine"]
    raise UsageError(f"unknown phase '{name}'; choose one of: {', '.join(names)}")


def phase_module(phase: str) -> str:
    """The import name of ``phase``: its directory's, but for the engine where ``shared`` is not importable (a
    notebook's kernel, anywhere but the checkout's root): pyproject installs ``shared/`` as ``titaninfer``."""
    if phase == "shared" and importlib.util.find_spec("shared") is None:
        return "titaninfer"
    return phase


def load_phase(phase: str):
    for part in ("bench", "checks"):
        if not (ROOT / phase / f"{part}.py").exists():
            raise UsageError(f"{phase} has no {part}.py yet: its issue has not landed, so there is nothing "
                             "to check")
    bench = importlib.import_module(f"{phase_module(phase)}.bench")
    checks = importlib.import_module(f"{phase_module(phase)}.checks")
    if not hasattr(bench, "run") or not hasattr(checks, "TARGETS"):
        raise UsageError(f"{phase}: bench.py must define run(impl, size) and checks.py TARGETS")
    return bench, checks


def evaluate(targets, result: BenchResult) -> list[Outcome]:
    return [t.evaluate(result) for t in targets]


def format_table(outcomes: list[Outcome]) -> str:
    header = ("target", "threshold", "measured", "result")
    rows = [(o.target.id, o.target.threshold, o.measured, o.status_text) for o in outcomes]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(3)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header[:3], widths, strict=True)) + " | " + header[3]]
    lines.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 6)
    for r in rows:
        lines.append(" | ".join(str(c).ljust(w) for c, w in zip(r[:3], widths, strict=True)) + " | " + r[3])
    return "\n".join(lines)


def report_stem(device_slug: str, impl: str, size: str) -> str:
    if impl == "solution" and size == "full":
        return device_slug
    safe_impl = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in impl)
    return f"{device_slug}.{safe_impl}.{size}"


def run_check(phase_name: str, impl: str = "solution", size: str | None = None,
              out_root: Path | None = None, write: bool = True) -> tuple[int, list[Outcome], list[Path]]:
    phase = resolve_phase(phase_name)
    bench, checks = load_phase(phase)
    try:
        load_impl(phase, impl)
    except ImplError as e:
        raise UsageError(str(e)) from None
    device = detect_device()
    if size is None:
        size = "full" if device.is_cuda else "small"
    if size not in ("small", "full"):
        raise UsageError(f"unknown size '{size}'; choose small or full")
    print(f"[check] {phase}: impl={impl} size={size} device={device.name}", flush=True)
    peaks = measured_peaks(device)
    t0 = time.perf_counter()
    # A bench that writes its own figures (plots beside the report) takes the report folder.
    takes_out_dir = "out_dir" in inspect.signature(bench.run).parameters
    extra = {"out_dir": Path(out_root or ROOT / "reports") / phase} if takes_out_dir else {}
    result: BenchResult = bench.run(impl=impl, size=size, **extra)
    print(f"[check] bench finished in {time.perf_counter() - t0:.1f} s", flush=True)
    outcomes = evaluate(checks.TARGETS, result)
    print(format_table(outcomes))
    written: list[Path] = []
    if write:
        template_path = ROOT / phase / "PROFILING_TEMPLATE.md"
        if not template_path.exists():
            template_path = ROOT / "module0_profiling" / "PROFILING_TEMPLATE.md"
        out_dir = Path(out_root or ROOT / "reports") / phase
        written = write_report(
            out_dir=out_dir, stem=report_stem(device.slug, impl, size), template=template_path.read_text(),
            phase=phase, impl=impl, size=size, device=device, peaks=peaks, result=result, outcomes=outcomes,
        )
        print(f"[check] report: {written[0]}")
    failed = [o for o in outcomes if o.status == FAIL]
    passed = sum(o.status == PASS for o in outcomes)
    skipped = sum(o.status == SKIP for o in outcomes)
    print(f"[check] {passed} passed, {len(failed)} failed, {skipped} skipped")
    return (1 if failed else 0), outcomes, written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m module0_profiling.check",
                                 description="Run a phase's bench and targets.")
    ap.add_argument("phase", help="module0, phase0 … phase7, engine (or the directory name)")
    ap.add_argument("--impl", default="solution",
                    help="framework, solution, or a module path (default: solution)")
    ap.add_argument("--size", choices=["small", "full"], default=None,
                    help="full = TinyLlama's shapes (default on a GPU); small = seconds on a CPU "
                         "(default without GPU)")
    ap.add_argument("--out", type=Path, default=None, help="reports root (default: <repo>/reports)")
    ap.add_argument("--no-report", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    try:
        code, _, _ = run_check(args.phase, impl=args.impl or "solution", size=args.size, out_root=args.out,
                               write=not args.no_report)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
