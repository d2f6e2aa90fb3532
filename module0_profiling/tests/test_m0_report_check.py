"""The report fills every field; the check runner's table, exit codes and SKIP reasons."""

import json
import random
import sys
import textwrap
from pathlib import Path

import pytest

from module0_profiling import check
from module0_profiling.hardware import DeviceInfo, Peaks
from module0_profiling.report import PLACEHOLDER, build_fields, render, write_report
from module0_profiling.targets import FAIL, PASS, SKIP, BenchResult, Comparison, RooflinePoint, Target
from module0_profiling.trace import KernelStat, TraceSummary

ROOT = Path(__file__).resolve().parents[2]
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 132, 79.2, "9.0", 50.0)
PEAKS = Peaks("NVIDIA H100 80GB HBM3", 2935.0, 781.0, "bfloat16", 8192, 2**30, "2026-11-23")


def _result() -> BenchResult:
    t_fw, t_sol = random.uniform(2e-5, 4e-5), random.uniform(5e-6, 1e-5)
    r = BenchResult(metrics={"speedup": t_fw / t_sol}, context={"workload": "gemv"})
    r.comparisons = [Comparison("framework", t_fw, 3.3e7, 3.3e7), Comparison("solution", t_sol, 3.3e7, 3.3e7)]
    r.roofline = [RooflinePoint("gemv", 3.3e7, 3.3e7, t_sol)]
    r.trace = TraceSummary("cuda", 1e-3, 4e-4, 200, 100, 5e-6, 2e-6, iters=2,
                           kernels=[KernelStat("gemv", 100, 3e-4, 3e-6, 0.75),
                                    KernelStat("reduce", 100, 1e-4, 1e-6, 0.25)])
    r.trace_region = "a loop"
    r.tables["sweep"] = "| a | b |\n|---|---|\n| 1 | 2 |"
    r.notes.append("a note")
    r.ncu_reason = "ncu is not on PATH"
    return r


def _targets():
    return [Target("X.1", "speed-up", "≥ 2×", ["speedup"], lambda s: s >= 2),
            Target("X.2", "needs a GPU metric", "≥ 1", ["gpu_only"], lambda v: v >= 1)]


def _templates():
    return sorted(ROOT.glob("*/PROFILING_TEMPLATE.md"))


@pytest.mark.parametrize("template", _templates(), ids=lambda p: p.parent.name)
def test_every_template_field_is_filled(template, tmp_path):
    result = _result()
    result.skip("gpu_only", "no GPU here")
    outcomes = [t.evaluate(result) for t in _targets()]
    paths = write_report(out_dir=tmp_path, stem="dev", template=template.read_text(), phase="p",
                         impl="solution", size="full", device=H100, peaks=PEAKS, result=result,
                         outcomes=outcomes)
    md = paths[0].read_text()
    assert not PLACEHOLDER.search(md), "unfilled placeholder"
    assert "n/a: no field" not in md, "the template names a field the report does not know"
    assert "NVIDIA H100" in md and "X.1" in md and "SKIP (no GPU here)" in md
    data = json.loads(paths[1].read_text())
    assert data["targets"][0]["status"] == PASS and data["targets"][1]["status"] == SKIP
    assert any(p.suffix == ".png" for p in paths)


def test_fields_on_cpu_say_why_they_are_absent():
    cpu = DeviceInfo("cpu", "cpu-test-2c")
    r = BenchResult()
    f = build_fields(phase="p", impl="solution", size="small", device=cpu, peaks=None, result=r, outcomes=[],
                     roofline_png=None)
    for key in ("gpu_busy", "launch_count", "top_kernels", "ncu", "roofline", "before_after", "peaks"):
        assert f[key].startswith("n/a: "), key
    assert all(v for v in f.values())


def test_render_marks_unknown_fields():
    assert render("a {{x}} b {{ y }}", {"x": "1"}) == "a 1 b n/a: no field 'y' in this run"


def test_target_evaluation_never_passes_a_missing_metric():
    t = Target("T", "d", "≥ 1", ["m"], lambda v: True)
    assert t.evaluate(BenchResult()).status == SKIP
    r = BenchResult(metrics={"m": 0.5})
    assert Target("T", "d", "≥ 1", ["m"], lambda v: v >= 1).evaluate(r).status == FAIL


def _fake_phase(tmp_path, monkeypatch, value: float):
    pkg = tmp_path / "phase9_fake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "framework.py").write_text("")
    (pkg / "solution.py").write_text("")
    (pkg / "bench.py").write_text(textwrap.dedent(f"""
        from module0_profiling.targets import BenchResult
        def run(impl, size):
            r = BenchResult(metrics={{"ratio": {value}}}, context={{"impl": impl}})
            r.skip("gpu", "needs a CUDA GPU")
            return r
    """))
    (pkg / "checks.py").write_text(textwrap.dedent("""
        from module0_profiling.targets import Target
        TARGETS = [Target("F.1", "ratio", "≥ 2×", ["ratio"], lambda r: r >= 2),
                   Target("F.2", "gpu", "≥ 1", ["gpu"], lambda r: r >= 1)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(check, "ROOT", tmp_path)
    monkeypatch.setattr(check, "PHASES", check.PHASES + ["phase9_fake"])
    for mod in [m for m in sys.modules if m.startswith("phase9_fake")]:
        del sys.modules[mod]
    (tmp_path / "module0_profiling").mkdir(exist_ok=True)
    (tmp_path / "module0_profiling" / "PROFILING_TEMPLATE.md").write_text(
        (ROOT / "module0_profiling" / "PROFILING_TEMPLATE.md").read_text())


def test_runner_exit_code_1_on_fail(tmp_path, monkeypatch, capsys):
    _fake_phase(tmp_path, monkeypatch, 1.5)
    assert check.main(["phase9", "--out", str(tmp_path / "rep")]) == 1
    out = capsys.readouterr().out
    assert "F.1" in out and "FAIL" in out and "SKIP (needs a CUDA GPU)" in out


def test_runner_exit_code_0_on_pass_and_report_names(tmp_path, monkeypatch):
    _fake_phase(tmp_path, monkeypatch, 3.0)
    code, outcomes, written = check.run_check("phase9_fake", size="small", out_root=tmp_path / "rep")
    assert code == 0 and [o.status for o in outcomes] == [PASS, SKIP]
    assert written[0].name.endswith(".solution.small.md")


def test_runner_usage_errors_exit_2(tmp_path, monkeypatch, capsys):
    assert check.main(["phase42"]) == 2
    assert "unknown phase 'phase42'" in capsys.readouterr().err
    _fake_phase(tmp_path, monkeypatch, 3.0)
    assert check.main(["phase9", "--impl", "phase9_fake.nope"]) == 2
    err = capsys.readouterr().err
    assert "does not import" in err and "framework, solution" in err
    (tmp_path / "phase9_fake" / "bench.py").unlink()
    assert check.main(["phase9"]) == 2
    assert "no bench.py" in capsys.readouterr().err


def test_resolve_phase_aliases():
    assert check.resolve_phase("module0") == "module0_profiling"
    assert check.resolve_phase("phase3") == "phase3_paged_attention"
    assert check.resolve_phase("phase3_paged_attention/") == "phase3_paged_attention"
    assert check.resolve_phase("engine") == "shared"


def test_report_stem():
    assert check.report_stem("h100", "solution", "full") == "h100"
    assert check.report_stem("h100", "framework", "full") == "h100.framework.full"
    assert check.report_stem("h100", "phase2_rope_cuda.mine", "small") == "h100.phase2_rope_cuda.mine.small"


def test_module0_on_cpu_skips_gpu_targets_with_reasons(tmp_path, capsys):
    code, outcomes, written = check.run_check("module0", size="small", out_root=tmp_path)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test covers the CPU path")
    assert code == 0
    # M0.1-M0.3 need a GPU; M0.4 (the loop's output) is judged on any machine
    assert [o.status for o in outcomes] == [SKIP, SKIP, SKIP, PASS]
    assert all(o.reason for o in outcomes[:3])
    post = next(p for p in written if p.name.endswith(".post.md")).read_text()
    assert "**M0.4**" in post and "Write:" in post  # the judged target heads the write-up skeleton
    md = written[0].read_text()
    assert not PLACEHOLDER.search(md)
