"""Every phase's check at SIZE=small: the bench runs, the table prints, the report has every field.

`make test` includes a smoke run of every phase's check at SIZE=small that asserts the report is
produced with every field filled. GPU targets are SKIP with a reason on CPU, never PASS.
"""

from pathlib import Path

import pytest
import torch

from module0_profiling import check
from module0_profiling.report import PLACEHOLDER
from module0_profiling.targets import PASS, SKIP

ROOT = Path(__file__).resolve().parents[2]
PHASES = [p for p in check.PHASES if (ROOT / p / "bench.py").exists() and (ROOT / p / "checks.py").exists()]


@pytest.mark.parametrize("phase", PHASES)
def test_phase_check_small(phase, tmp_path):
    code, outcomes, written = check.run_check(phase, impl="solution", size="small", out_root=tmp_path)
    assert outcomes, f"{phase} defines no targets"
    md = written[0].read_text()
    assert not PLACEHOLDER.search(md)
    post = next(p for p in written if p.name.endswith(".post.md")).read_text()  # the write-up skeleton
    assert not PLACEHOLDER.search(post) and "n/a: no field" not in post
    assert "n/a: no field" not in md
    assert (tmp_path / phase / (written[0].stem + ".json")).exists()
    for o in outcomes:
        assert o.status != SKIP or o.reason, f"{o.target.id} skipped without a reason"
    if not torch.cuda.is_available():
        gpu_words = ("GPU", "CUDA", "cuda", "gpu")
        for o in outcomes:
            if o.status == PASS:
                continue
            assert o.status == SKIP or not any(w in o.reason for w in gpu_words)
