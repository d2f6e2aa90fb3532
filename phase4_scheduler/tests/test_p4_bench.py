"""The check at size small: P4.4 and P4.5 measured on CPU, GPU targets SKIP with a reason; the CLI."""

from __future__ import annotations

from module0_profiling.targets import PASS, SKIP
from phase4_scheduler import bench, checks, online_bench
from phase4_scheduler.__main__ import main


def test_small_bench_measures_p44_p45_and_skips_gpu_targets():
    """P4.5 and P4.4's aging bound count requests and steps, so they must pass; P4.4's ≥ 2× is wall-clock (the
    check's verdict on a quiet machine): on a shared CI core only the direction is asserted."""
    result = bench.run("solution", "small")
    outcomes = {t.id: t.evaluate(result) for t in checks.TARGETS}
    # P4.4 and P4.5 count steps and requests, so they must pass; P4.1 (vs static batching) is measured on the
    # CPU too (wall clock: its verdict is not asserted, its step count is); the GPU targets SKIP with a reason.
    assert outcomes["P4.5"].status == PASS, outcomes["P4.5"]
    assert outcomes["P4.4"].status == PASS, outcomes["P4.4"]
    for gpu_target in ("P4.2", "P4.3", "P4.6", "P4.7", "P4.9", "P4.10", "P4.11", "P4.12"):
        assert outcomes[gpu_target].status == SKIP and outcomes[gpu_target].reason
    assert outcomes["P4.1"].status != SKIP and result.metrics["steps_vs_static"] > 1.5
    # P4.9's CPU figures: the P4.1 run's steps against the CPU's measured peaks, in the report's table
    assert "achieved fraction of the roofline" in result.tables["Serving against its roofline (P4.9, P4.10)"]
    assert len(result.roofline) == 1 and 0 < result.roofline[0].flops and 0 < result.roofline[0].bytes
    # P4.11/P4.12's CPU figures: every setting at every load served all its requests (hang-ups excepted)
    online = next(v for k, v in result.tables.items() if k.startswith("Online serving"))
    rows = [line.split(" | ") for line in online.splitlines()[2:-1]]
    small = online_bench.SIZES["small"]
    assert len(rows) == len(small["configs"]) * (len(small["rates"]) + 1), online
    assert all(row[-1].rstrip(" |") == "0" for row in rows), online
    # the host cost of a streamed request: the server process (measured as a whole) spent more CPU per request
    # than tokenizing, the engine loop and detokenizing (each measured apart) cost together
    costs = next(v for k, v in result.tables.items() if k.startswith("Host cost per request"))
    stages = [float(line.split(" | ")[1].replace(",", "")) for line in costs.splitlines()[2:6]]
    assert min(stages[:3]) > 0 and stages[3] > 0, costs


def test_cli_reports_a_bad_model_in_one_line(capsys):
    assert main(["serve", "--model", "no-such-model", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model path no-such-model does not exist") and "\n" not in err
