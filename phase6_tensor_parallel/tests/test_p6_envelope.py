"""P6.4's model is NCCL's: one α-β line per protocol (fitted to its NCCL_PROTO-forced sweep), the minimum over
them predicts the default sweep. Synthetic timings from known per-protocol lines; fake and real (gloo) launches."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest

from phase6_tensor_parallel.allreduce_report import plot, table
from phase6_tensor_parallel.allreduce_study import (
    PROTOCOLS,
    AlphaBeta,
    ProtocolRunFailed,
    analyse,
    envelope,
    failure_reason,
    predictor,
    run_study,
    sizes_bytes,
    torchrun_sweep,
)


def hand_time(algo: str, world: int, alpha: float, beta: float, n: float) -> float:
    """The textbook formulas, written out again (independent of ``model_terms``)."""
    if algo == "Ring":
        return 2 * (world - 1) * alpha + 2 * (world - 1) / world * n * beta
    return 2 * math.ceil(math.log2(world)) * alpha + 2 * n * beta


def nccl_like_lines(rng, algo: str, world: int = 2) -> dict[str, AlphaBeta]:
    """LL: least latency, least bandwidth; LL128 between; Simple: most latency, full bandwidth."""
    return {"LL": AlphaBeta(algo, world, rng.uniform(3e-6, 5e-6), 1 / rng.uniform(15e9, 30e9)),
            "LL128": AlphaBeta(algo, world, rng.uniform(7e-6, 10e-6), 1 / rng.uniform(150e9, 250e9)),
            "Simple": AlphaBeta(algo, world, rng.uniform(14e-6, 20e-6), 1 / rng.uniform(350e9, 480e9))}


def synthetic_runs(rng, algo: str, lines: dict[str, AlphaBeta], sizes: list[int], noise: float) -> dict:
    """The default sweep = lower envelope of the true lines; each forced sweep = its own line; ± noise."""
    def jitter(t):
        return t * (1 + rng.uniform(-noise, noise))

    default = [jitter(min(hand_time(algo, 2, ab.alpha_s, ab.beta_s_per_byte, n) for ab in lines.values()))
               for n in sizes]
    protos = {p: {"algo": algo, "world": 2, "sizes": sizes, "proto": p,
                  "seconds": [jitter(hand_time(algo, 2, ab.alpha_s, ab.beta_s_per_byte, n)) for n in sizes]}
              for p, ab in lines.items()}
    return {"algo": algo, "world": 2, "sizes": sizes, "seconds": default, "method": "synthetic", "protocols": protos}


@pytest.mark.parametrize("algo,world", [("Ring", 2), ("Tree", 2), ("Ring", 8), ("Tree", 8)])
def test_envelope_is_the_brute_force_minimum_over_protocol_lines(algo, world):
    rng = np.random.default_rng(100 + world + len(algo))
    params = {p: (rng.uniform(1e-6, 3e-5), 1 / rng.uniform(10e9, 500e9)) for p in PROTOCOLS}
    lines = {p: AlphaBeta(algo, world, a, b) for p, (a, b) in params.items()}
    for n in rng.integers(1, 2**30, size=50):
        brute = {p: hand_time(algo, world, a, b, float(n)) for p, (a, b) in params.items()}
        t, name = envelope(lines, float(n))
        assert t == pytest.approx(min(brute.values()), rel=1e-12)
        assert brute[name] == pytest.approx(min(brute.values()), rel=1e-12)
    with pytest.raises(ValueError, match="at least one fitted protocol line"):
        envelope({}, 1024)


@pytest.mark.parametrize("algo,seed", [("Ring", 1), ("Tree", 2), ("Tree", 3)])
def test_per_protocol_fits_recover_the_lines_and_their_envelope_fits_where_one_line_cannot(algo, seed):
    rng = np.random.default_rng(seed)
    lines = nccl_like_lines(rng, algo)
    sizes = sizes_bytes()
    r = analyse(synthetic_runs(rng, algo, lines, sizes, noise=0.03))
    for p, true in lines.items():
        got = AlphaBeta(**r["protocols"][p]["fit"])
        assert math.isclose(got.alpha_s, true.alpha_s, rel_tol=0.1), (p, got, true)
        assert math.isclose(got.beta_s_per_byte, true.beta_s_per_byte, rel_tol=0.1), (p, got, true)
        assert r["protocols"][p]["model_error"] <= 0.03 + 1e-9  # the true line is within the noise
    # ±3 % on the forced sweeps and on the default one: the envelope of the fitted lines stays within ~6 %.
    assert r["envelope_error"] < 0.07
    assert r["model_error"] > 0.25 > 3 * r["envelope_error"]  # one line cannot follow three
    # The envelope picks the protocol whose TRUE line is cheapest wherever the choice is clear.
    for n, picked in zip(sizes, r["envelope_protocol"], strict=True):
        times = sorted((ab.predict(n), p) for p, ab in lines.items())
        if times[1][0] > 1.15 * times[0][0]:
            assert picked == times[0][1], (n, picked, times)
    assert predictor(r)(sizes[4]) == pytest.approx(r["envelope_seconds"][4])


def fake_launch(lines: dict[str, dict[str, AlphaBeta]], fail: dict[tuple[str, str], str], calls: list):
    """Stands in for ``torchrun_sweep``: exact timings from ``lines[algo][proto]`` (default: their minimum)."""
    def launch(world, algo, proto, *, sizes, iters, device, timeout_s):
        calls.append((algo, proto, iters, device, timeout_s))
        if (algo, proto) in fail:
            raise ProtocolRunFailed(fail[algo, proto])
        use = lines[algo] if proto is None else {proto: lines[algo][proto]}
        seconds = [min(ab.predict(n) for ab in use.values()) for n in sizes]
        return {"algo": algo, "world": world, "sizes": sizes, "seconds": seconds, "method": "fake", "proto": proto}
    return launch


def test_run_study_skips_a_refused_protocol_with_its_reason_and_envelopes_the_rest(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(7)
    lines = {a: nccl_like_lines(rng, a) for a in ("Ring", "Tree")}
    reason = "exit status 1: no algorithm/protocol available for AllReduce (NCCL_PROTO=LL128)"
    calls: list = []
    sizes = sizes_bytes(factor=16)
    runs = run_study(2, sizes=sizes, iters=20, protocol_iters=6, device="cuda", timeout_s=120, protocol_timeout_s=90,
                     launch=fake_launch(lines, {("Tree", "LL128"): reason}, calls))
    # Per algorithm: the default sweep (NCCL picks, full iterations), then each protocol with fewer.
    assert calls == [(a, p, 20, "cuda", 120) if p is None else (a, p, 6, "cuda", 90)
                     for a in ("Ring", "Tree") for p in (None, *PROTOCOLS)]
    ring, tree = runs
    assert tree["protocols"]["LL128"] == {"skipped": reason}
    assert set(tree["protocols"]) == set(PROTOCOLS) and "LL128" not in tree["envelope_protocol"]
    assert ring["envelope_error"] < 1e-3  # exact data: every forced line is recovered
    assert tree["envelope_error"] == pytest.approx(max(
        abs(min(lines["Tree"][p].predict(n) for p in ("LL", "Simple")) - t) / t
        for n, t in zip(sizes, tree["seconds"], strict=True)), abs=1e-3)
    text = table(runs)
    assert f"Tree, LL128 forced: skipped ({reason})" in text
    assert "| 1 KB |" in text and "envelope picks" in text and "Tree, envelope of the LL, Simple lines" in text
    assert "Ring, envelope of the LL, LL128, Simple lines" in text and "(minimax fit); least squares: α =" in text
    png = plot(runs, str(tmp_path / "ab.png"))
    assert png and (tmp_path / "ab.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_metric_is_the_envelope_and_skips_when_no_protocol_ran(tmp_path):
    pytest.importorskip("matplotlib")
    from module0_profiling.targets import BenchResult
    from phase6_tensor_parallel.bench import allreduce_targets
    from phase6_tensor_parallel.checks import TARGETS

    rng = np.random.default_rng(11)
    lines = {a: nccl_like_lines(rng, a) for a in ("Ring", "Tree")}
    fail = {("Tree", p): f"exit status 1: {p} refused" for p in PROTOCOLS}
    runs = run_study(2, sizes=sizes_bytes(factor=16), device="cuda", launch=fake_launch(lines, fail, []))
    result = BenchResult()
    allreduce_targets(result, tmp_path, "h200", study=lambda: runs)
    assert result.metrics["p6_4_model_error_ring"] == runs[0]["envelope_error"]
    assert result.metrics["p6_4_single_line_error_ring"] == runs[0]["model_error"]
    assert result.metrics["p6_4_single_line_error_tree"] == runs[1]["model_error"]
    assert "p6_4_model_error_tree" not in result.metrics
    assert "Simple: exit status 1: Simple refused" in result.skipped["p6_4_model_error_tree"]
    assert "Tree, envelope: n/a (no forced-protocol sweep succeeded)" in result.tables["all-reduce α-β study (2 GPUs)"]
    assert (tmp_path / "h200.allreduce_alpha_beta.png").stat().st_size > 1000
    p64 = next(t for t in TARGETS if t.id == "P6.4")
    assert list(p64.metrics) == ["p6_4_model_error_ring", "p6_4_model_error_tree"]


def test_runs_without_protocol_sweeps_keep_the_single_line():
    """gloo, and results saved before the protocol sweeps existed (e.g. the committed h200 figures)."""
    sizes = sizes_bytes()
    rng = np.random.default_rng(5)
    truth = AlphaBeta("Tree", 2, 9e-6, 1 / 300e9)
    run = analyse({"algo": "Tree", "world": 2, "sizes": sizes,
                   "seconds": [truth.predict(n) * (1 + rng.uniform(-0.02, 0.02)) for n in sizes]})
    assert "envelope_error" not in run and "protocols" not in run
    assert predictor(run)(4096) == AlphaBeta(**run["fit"]).predict(4096)
    text = table([run])
    assert "Tree, envelope: n/a (no forced-protocol sweeps in this run)" in text and "envelope µs" not in text


def test_failure_reason_finds_nccls_own_error():
    log = ("[rank0]: Traceback (most recent call last):\n"
           "[rank0]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:3356, invalid usage\n"
           "[rank0]: ncclInvalidUsage: This usually reflects invalid usage of NCCL library.\n"
           "[rank0]: Last error:\n"
           "[rank0]: Error : no algorithm/protocol available for function AllReduce with datatype ncclFloat32\n"
           "E1123 torch.distributed.elastic.multiprocessing.api: failed (exitcode: 1)\n")
    assert failure_reason(log) == "Error : no algorithm/protocol available for function AllReduce with datatype ncclFloat32"
    warn = "host:1:1 [0] NCCL INFO x\nhost:1:1 [0] init.cc:1 NCCL WARN Invalid NCCL_PROTO value LL256\n"
    assert failure_reason(warn) == "Invalid NCCL_PROTO value LL256"
    assert failure_reason("[rank1]: ValueError: bad size\n") == "ValueError: bad size"
    assert failure_reason("") == "no output"


def test_gloo_study_runs_the_default_sweep_only_and_a_failed_forced_sweep_is_reported():
    """Real torchrun launches on CPU: the smoke path, and a forced sweep that fails or hangs."""
    runs = run_study(2, ("Ring",), sizes=[1024, 4096], iters=2, device="cpu", timeout_s=120)
    assert len(runs) == 1 and "protocols" not in runs[0] and "envelope_error" not in runs[0]
    assert runs[0]["method"] == "k eager calls per sample" and all(t > 0 for t in runs[0]["seconds"])
    assert "| 4 KB |" in table(runs)
    with pytest.raises(ProtocolRunFailed, match=r"exit status \d+: .*ValueError"):
        torchrun_sweep(2, "Ring", "LL", sizes=["not-a-size"], iters=1, device="cpu", timeout_s=120)
    with pytest.raises(ProtocolRunFailed, match="timed out after 0 s"):
        torchrun_sweep(2, "Ring", "LL", sizes=[1024], iters=1, device="cpu", timeout_s=0.2)
    with pytest.raises(subprocess.TimeoutExpired):  # the default sweep's failure is not swallowed
        torchrun_sweep(2, "Ring", None, sizes=[1024], iters=1, device="cpu", timeout_s=0.2)
