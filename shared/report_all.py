"""``titaninfer report``: regenerate every phase's report, one check-runner process per phase.

Each phase runs as ``python -m module0_profiling.check <phase> --impl … --size …`` in its own process, so
one phase's GPU memory, compiled graphs or Triton mode never leak into the next (``TRITON_INTERPRET=1`` is
set without a GPU, as ``make test`` does). Each check's own lines (its progress, its target table) are
echoed indented as they come; the summary lists each phase's exit status, time and report. Exit code 1
when any phase failed a target or crashed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from module0_profiling.check import PHASES, ROOT, UsageError, resolve_phase


def phases_with_checks() -> list[str]:
    return [p for p in PHASES if (ROOT / p / "checks.py").exists() and (ROOT / p / "bench.py").exists()]


def check_command(phase: str, impl: str, size: str | None, out: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "module0_profiling.check", phase, "--impl", impl]
    if size:
        cmd += ["--size", size]
    if out is not None:
        cmd += ["--out", str(out)]
    return cmd


def report_path(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("[check] report:"):
            return line.split(":", 1)[1].strip()
    return "—"


def run_one(cmd: list[str], env: dict, stream, echo: bool) -> tuple[int, str]:
    """Run one check, echoing its lines (progress, the target table) indented; ``(exit code, output)``."""
    lines = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line)
            if echo and not line.startswith("USDT:"):  # (libkineto's start/stop chatter)
                stream.write("    " + line)
                stream.flush()
    return proc.returncode, "".join(lines)


def run_reports(phases: list[str] | None = None, *, impl: str = "solution", size: str | None = None,
                out: Path | None = None, echo: bool = True, stream=sys.stderr) -> int:
    try:
        chosen = [resolve_phase(p) for p in phases] if phases else phases_with_checks()
    except UsageError as e:
        print(f"error: {e}", file=stream)
        return 2
    missing = [p for p in chosen if p not in phases_with_checks()]
    if missing:
        print(f"error: {', '.join(missing)} has no bench.py/checks.py yet: nothing to report", file=stream)
        return 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    import torch

    if not torch.cuda.is_available():
        env.setdefault("TRITON_INTERPRET", "1")
    rows, failed = [], 0
    t_all = time.perf_counter()
    for i, phase in enumerate(chosen, 1):
        print(f"[report {i}/{len(chosen)}] {phase}: running its check (impl={impl}, size={size or 'default'}) …",
              file=stream, flush=True)
        t0 = time.perf_counter()
        code, output = run_one(check_command(phase, impl, size, out), env, stream, echo)
        seconds = time.perf_counter() - t0
        status = {0: "all targets pass or skip", 1: "a target failed", 2: "usage error"}.get(code, f"crashed (exit {code})")
        tail = [line for line in output.splitlines() if line.startswith("[check]") and "passed" in line]
        print(f"[report {i}/{len(chosen)}] {phase}: {status} in {seconds:.0f} s"
              + (f" — {tail[-1][8:]}" if tail else ""), file=stream, flush=True)
        failed += code != 0
        rows.append((phase, status, f"{seconds:.0f} s", report_path(output)))
    print("\n| phase | result | time | report |\n|---|---|---|---|", file=stream)
    for r in rows:
        print("| " + " | ".join(r) + " |", file=stream)
    print(f"[report] {len(rows)} phases in {time.perf_counter() - t_all:.0f} s, {failed} with a failure", file=stream)
    return 1 if failed else 0
