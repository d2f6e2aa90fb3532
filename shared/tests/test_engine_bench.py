"""The end-to-end benchmark at SIZE=small on a CPU: every row measured or SKIP with its reason, E.1's and
E.2's GPU metrics SKIP (never PASS), the INT4 row batched on the bf16 row's requests, the report filled in
every field, the plot written; a bad IMPL fails first. E.2's parts on their own: the ITL p50 against numpy,
the streams running together, the ratios from two rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import shared.bench as bench
from module0_profiling import check
from module0_profiling.targets import SKIP, BenchResult
from shared import checks as engine_checks
from shared.bench_int4 import E2_METRICS, e2_metrics, itl_p50, stream_arrivals
from shared.bench_rows import Row
from shared.engine import EngineConfig, LLMEngine
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


def test_e1_and_e2_skip_on_cpu_with_their_reason(checked):
    code, outcomes, _, _ = checked
    assert code == 0
    assert [o.target.id for o in outcomes] == ["E.1a", "E.1b", "E.2a", "E.2b"]
    assert all(o.status == SKIP and "CUDA GPU" in o.reason for o in outcomes)
    assert all(o.reason.startswith(o.target.id[:3]) for o in outcomes)  # E.1's reason for E.1, E.2's for E.2


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
    assert data["metrics"] == {} and set(data["skipped"]) == {"e1_decode_mbu", "e1_throughput_vs_hf", *E2_METRICS}


def _cells(md: str, section: str, first: str) -> list[str]:
    line = next(x for x in md.split(f"### {section}")[1].splitlines() if x.startswith(f"| {first}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_int4_row_is_batched_on_the_bf16_rows_requests(checked):
    md = checked[2][0].read_text()
    table = "The engine, phase by phase"
    float_row = _cells(md, table, "[+ paged KV & continuous batching")
    int4 = _cells(md, table, "[+ INT4 weights (phase 5)]")
    assert float(int4[1].replace(",", "")) > 0
    assert int4[-1].startswith("phase 4 continuous batching") and "phase 5 INT4 (rtn)" in int4[-1]
    assert int4[-1].split("throughput: ")[1] == float_row[-1].split("throughput: ")[1] == \
        "16 requests, continuous batching"
    e2 = "INT4 vs float weights under continuous batching (E.2)"
    for first in ("fp32", "INT4 (RTN"):
        cells = _cells(md, e2, first)
        assert float(cells[1].replace(",", "")) > 0 and float(cells[2]) > 0, cells
    assert "ITL p50, 8 streams" in md.split(f"### {e2}")[1]


def test_itl_p50_matches_numpy_on_random_gaps():
    rng = np.random.default_rng()
    for total in (rng.integers(200, 400) * 2, rng.integers(200, 400) * 2 + 1):  # even and odd gap counts
        sizes = rng.multinomial(total, np.ones(12) / 12)
        gaps = [rng.exponential(2e-3, n) for n in sizes]
        arrivals = {rid: list(rng.uniform(0, 1) + np.concatenate([[0.0], np.cumsum(g)]))
                    for rid, g in zip(rng.permutation(len(gaps)).tolist(), gaps, strict=True)}
        arrivals[99] = [0.5]  # one token: no gap
        assert itl_p50(arrivals) == pytest.approx(float(np.median(np.concatenate(gaps))), rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="no inter-token gap"):
        itl_p50({1: [0.1], 2: []})


def test_streams_run_together_one_event_per_token():
    engine = LLMEngine(EngineConfig(model="random:tiny", device="cpu", max_num_seqs=6, max_num_batched_tokens=128))
    prompts = [[1 + i, 7, 3 + i] for i in range(6)]
    arrivals = stream_arrivals(engine.batched, prompts, 5)
    assert sorted(map(len, arrivals.values())) == [5] * 6
    assert all(np.all(np.diff(t) > 0) for t in arrivals.values())
    # every first token (one prefill step for all) arrives before any second token
    assert max(t[0] for t in arrivals.values()) < min(t[1] for t in arrivals.values())
    assert not engine.batched.has_unfinished()


def test_e2_ratios_from_the_two_rows_or_why_not():
    bf16 = Row("bf16", "phase4_scheduler", throughput=1000.0, itl_p50=2e-3)
    int4 = Row("int4", "phase5_quantization", throughput=950.0, itl_p50=1.2e-3)
    result = BenchResult()
    e2_metrics(result, bf16, int4, defined_here=True)
    assert result.metrics["e2_throughput_int4_vs_bf16"] == pytest.approx(0.95)
    assert result.metrics["e2_itl_p50_int4_vs_bf16"] == pytest.approx(0.6)
    e2 = [t for t in engine_checks.TARGETS if t.id.startswith("E.2")]
    assert [o.status for o in check.evaluate(e2, result)] == ["PASS", "PASS"]
    result.metrics.update(e2_throughput_int4_vs_bf16=0.85, e2_itl_p50_int4_vs_bf16=0.8)
    assert [o.status for o in check.evaluate(e2, result)] == ["FAIL", "FAIL"]
    int4.skip = "phase 5's INT4 engine cannot run this model: …"
    result = BenchResult()
    e2_metrics(result, bf16, int4, defined_here=True)
    assert not set(E2_METRICS) & set(result.metrics)
    assert all(result.skipped[m].startswith("int4: phase 5's INT4") for m in E2_METRICS)



def test_plot_is_written_beside_the_report(checked):
    _, _, written, out = checked
    pngs = list((out / "reports" / "shared").glob("*.engine.png"))
    assert pngs and pngs[0].stat().st_size > 10_000
    assert f"![engine comparison]({pngs[0].name})" in written[0].read_text()


def test_bad_impl_fails_before_measuring():
    with pytest.raises(ImplSpecError, match="unknown phase"):
        bench.run("phase9=framework", "small")
