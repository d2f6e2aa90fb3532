"""The three milestone gates: ``python -m module0_profiling.milestone 1|2|3`` (``make check-milestone1`` …).

A milestone runs the checks of its phases in one go and ends with what to revisit: every target that failed
(measured against its threshold) and every one this machine could not judge (SKIP, with the reason), per phase.

- milestone 1 — measuring and single-request speed: module 0, phases 0–2;
- milestone 2 — paged attention and serving: phases 3–4;
- milestone 3 — past one device's limits: phases 5–6.

Each phase runs the learner's ``<phase>/mine.py`` where it exists, else the solution (``--impl`` forces one
built-in implementation everywhere). Exit status 1 when any target failed, as ``check``.
"""

from __future__ import annotations

import argparse
import sys

from module0_profiling.check import ROOT, UsageError, run_check
from module0_profiling.targets import FAIL, SKIP, Outcome

MILESTONES = {
    1: ("module0_profiling", "phase0_prototype", "phase1_rust_memory", "phase2_rope_cuda"),
    2: ("phase3_paged_attention", "phase4_scheduler"),
    3: ("phase5_quantization", "phase6_tensor_parallel"),
}


def impl_for(phase: str, forced: str | None) -> str:
    """The implementation a milestone checks in ``phase``: ``forced``, else the learner's module if present."""
    if forced:
        return forced
    return f"{phase}.mine" if (ROOT / phase / "mine.py").exists() else "solution"


def revisit(results: dict[str, tuple[str, list[Outcome]]]) -> list[str]:
    """One line per target to revisit: failed ones first (measured vs threshold), then the unjudged."""
    lines = []
    for status, verb in ((FAIL, "FAIL"), (SKIP, "SKIP")):
        for phase, (impl, outcomes) in results.items():
            for o in outcomes:
                if o.status != status:
                    continue
                why = f"measured {o.measured}, wants {o.target.threshold}" if status == FAIL else o.reason
                lines.append(f"{verb} {o.target.id} ({phase}, {impl}): {o.target.description} — {why}")
    return lines


def run_milestone(number: int, forced: str | None = None, size: str | None = None) -> int:
    if number not in MILESTONES:
        raise UsageError(f"unknown milestone {number}; choose 1, 2 or 3")
    results: dict[str, tuple[str, list[Outcome]]] = {}
    for phase in MILESTONES[number]:
        impl = impl_for(phase, forced)
        _, outcomes, _ = run_check(phase, impl=impl, size=size)
        results[phase] = (impl, outcomes)
    lines = revisit(results)
    failed = sum(line.startswith("FAIL") for line in lines)
    print(f"\n[milestone {number}] {', '.join(MILESTONES[number])}")
    print("\n".join(lines) if lines else "every target passed")
    print(f"[milestone {number}] {failed} target(s) to revisit, {len(lines) - failed} not judged on this machine")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m module0_profiling.milestone", description=__doc__.splitlines()[0])
    ap.add_argument("number", type=int, help="1 (module 0, phases 0-2), 2 (phases 3-4) or 3 (phases 5-6)")
    ap.add_argument("--impl", choices=["framework", "solution"], default=None,
                    help="check this built-in implementation everywhere (default: your mine.py where it exists)")
    ap.add_argument("--size", choices=["small", "full"], default=None)
    args = ap.parse_args(argv)
    try:
        return run_milestone(args.number, args.impl, args.size)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
