"""The end-to-end benchmark at SIZE=small on a CPU: every row measured or SKIP with its reason, E.1's GPU
metrics SKIP (never PASS), the report filled in every field, the plot written; a bad IMPL fails first."""

from __future__ import annotations

import json

import pytest
import torch

import shared.bench as bench
from module0_profiling import check
from module0_profiling.targets import SKIP
from shared.impls import ImplSpecError

ROWS = ["phase 0 framework", "phase 0 solution", "+ paged KV & continuous batching (phases 1, 3, 4)",
        "+ INT4 weights (phase 5)", "TP=2 (phase 6)", "HF transformers, dynamic cache",
        "HF transformers, static cache (compiled)", "HF transformers generate_batch"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("the SIZE=small CPU run; on a GPU `make check-engine` runs SIZE=full")
    out = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "ROOT", out)  # the plot goes beside the report, not into the repository
        code, outcomes, written = check.run_check("engine", size="small", out_root=out / "reports")
    return code, outcomes, written, out


def test_e1_skips_on_cpu_with_its_reason(checked):
    code, outcomes, _, _ = checked
    assert code == 0
    assert [o.target.id for o in outcomes] == ["E.1a", "E.1b"]
    assert all(o.status == SKIP and "CUDA GPU" in o.reason for o in outcomes)


def test_every_row_is_measured_or_says_why_not(checked):
    _, _, written, _ = checked
    md = written[0].read_text()
    table = md.split("### The engine, phase by phase")[1].split("\n\n")[1]
    lines = [line for line in table.splitlines() if line.startswith("| [")]
    assert [line.split("](")[0][3:] for line in lines] == ROWS
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == "SKIP":
            assert len(cells[-1]) > 20, line  # the reason
        else:
            assert float(cells[1].split()[0].replace(",", "")) > 0 and float(cells[2]) > 0, line
    assert "{{" not in md and "bs=1 decode path" in md
    data = json.loads(written[1].read_text())
    assert data["metrics"] == {} and set(data["skipped"]) == {"e1_decode_mbu", "e1_throughput_vs_hf"}


def test_plot_is_written_beside_the_report(checked):
    _, _, written, out = checked
    pngs = list((out / "reports" / "shared").glob("*.engine.png"))
    assert pngs and pngs[0].stat().st_size > 10_000
    assert f"![engine comparison]({pngs[0].name})" in written[0].read_text()


def test_bad_impl_fails_before_measuring():
    with pytest.raises(ImplSpecError, match="unknown phase"):
        bench.run("phase9=framework", "small")
