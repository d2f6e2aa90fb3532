"""The milestone gates: which phases each runs, which module it checks, and the revisit list it prints."""

import random

from module0_profiling import check, milestone
from module0_profiling.targets import FAIL, PASS, SKIP, Outcome, Target


def _outcome(tid: str, status: str, measured: str = "—", reason: str = "") -> Outcome:
    return Outcome(Target(tid, f"what {tid} measures", "≥ 2×", ["m"], lambda v: v >= 2), status, measured, reason)


def test_every_phase_with_targets_is_in_exactly_one_milestone():
    phases = [p for group in milestone.MILESTONES.values() for p in group]
    assert len(phases) == len(set(phases))
    # phase 7 (DiT) and the assembled engine stand beside the three gates
    assert set(phases) == set(check.PHASES) - {"phase7_dit_parallel", "shared"}


def test_the_learners_module_is_checked_where_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(milestone, "ROOT", tmp_path)
    (tmp_path / "phase3_paged_attention").mkdir()
    (tmp_path / "phase3_paged_attention" / "mine.py").write_text("")
    assert milestone.impl_for("phase3_paged_attention", None) == "phase3_paged_attention.mine"
    assert milestone.impl_for("phase4_scheduler", None) == "solution"
    assert milestone.impl_for("phase3_paged_attention", "framework") == "framework"


def test_run_lists_failures_first_and_exits_1(monkeypatch, capsys):
    rng = random.Random()
    x = rng.uniform(0.1, 1.9)  # a fresh failing measurement
    fake = {"phase5_quantization": [_outcome("P5.1", PASS, "3.0×"), _outcome("P5.2", SKIP, reason="needs a GPU")],
            "phase6_tensor_parallel": [_outcome("P6.1", FAIL, f"{x:.2f}×")]}
    calls = []

    def run_check(phase, impl, size):
        calls.append((phase, impl, size))
        return 0, fake[phase], []

    monkeypatch.setattr(milestone, "run_check", run_check)
    assert milestone.run_milestone(3, "solution", "small") == 1
    assert [c[0] for c in calls] == list(milestone.MILESTONES[3])
    out = capsys.readouterr().out.splitlines()
    listed = [line for line in out if line.startswith(("FAIL", "SKIP"))]
    assert listed[0].startswith("FAIL P6.1") and f"measured {x:.2f}×, wants ≥ 2×" in listed[0]
    assert listed[1].startswith("SKIP P5.2") and "needs a GPU" in listed[1] and len(listed) == 2


def test_unknown_milestone_is_a_usage_error(capsys):
    assert milestone.main(["4"]) == 2
    assert "choose 1, 2 or 3" in capsys.readouterr().err
