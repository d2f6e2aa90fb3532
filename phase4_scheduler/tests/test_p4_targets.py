"""P4.1 (continuous vs static batching) and P4.4 (SJF vs FCFS in engine steps) as the check measures them.

Step counts depend on the scheduler alone (``ignore_eos`` fixes every length), so they are asserted exactly
or against bounds computed from the workload; wall-clock figures are only checked to exist. The workloads
are drawn fresh (random seed, lengths and seats) and kept small: the bundled 18M model on the CPU.
"""

from __future__ import annotations

import random

import pytest

from module0_profiling.targets import FAIL, PASS, BenchResult
from phase0_prototype.sources import load_model
from phase4_scheduler import bench, checks
from phase4_scheduler.loadgen import Workload


@pytest.fixture(scope="module")
def model():
    return load_model("kjv-llama-18m", dtype="fp32", device="cpu")


def _target(target_id: str):
    return next(t for t in checks.TARGETS if t.id == target_id)


def _static_steps_lower_bound(w: Workload, seats: int) -> int:
    """Static batching, FCFS: each batch of ``seats`` requests decodes until its longest one has all its tokens."""
    lengths = [n for _, n, _ in w.requests()]
    return sum(max(lengths[i:i + seats]) for i in range(0, len(lengths), seats))


def _draw(rng: random.Random, num_requests: int, num_long: int, wanted) -> Workload:
    """Random lengths and order, drawn again until ``wanted(lengths in arrival order, long length)``."""
    short, long = rng.randint(2, 4), rng.randint(20, 30)
    while True:
        w = Workload(num_requests, short_tokens=short, long_tokens=long,
                     short_fraction=1 - num_long / num_requests, seed=rng.randrange(2**31))
        if wanted([n for _, n, _ in w.requests()], long):
            return w


def _long_per_batch(rng: random.Random, seats: int) -> Workload:
    """Two batches of ``seats``, a long request in each: static batching pays two long requests in a row."""
    return _draw(rng, 2 * seats, 2, lambda lengths, long: long in lengths[:seats] and long in lengths[seats:])


def _long_ahead(rng: random.Random, num_requests: int, seats: int) -> Workload:
    """``seats`` long requests first in line, the rest short: under FCFS they hold every seat first."""
    return _draw(rng, num_requests, seats, lambda lengths, long: lengths[:seats] == [long] * seats)


def test_p41_steps_framework_vs_itself_is_one_and_solution_beats_it(model):
    rng = random.Random()
    seats = rng.choice([2, 3])
    w = _long_per_batch(rng, seats)
    runs = {impl: bench.offline_with_steps(bench._engine(model, impl, seats, 64), w) for impl in ("framework", "solution")}
    again = bench.offline_with_steps(bench._engine(model, "framework", seats, 64), w)
    assert again["steps"] == runs["framework"]["steps"]
    assert runs["framework"]["steps"] >= _static_steps_lower_bound(w, seats) == 2 * w.long_tokens
    tokens = sum(n for _, n, _ in w.requests())
    # a long request alone, then the rest: continuous batching ends near short + long steps, not 2 × long
    assert -(-tokens // seats) <= runs["solution"]["steps"] < runs["framework"]["steps"]


def test_p44_sjf_beats_fcfs_in_steps_and_is_deterministic(model):
    """A few long and many short requests, the long ones first in line: under FCFS every short request waits
    for a long one's seat (at least ``long_tokens`` steps), under SJF the short ones go first."""
    rng = random.Random()
    seats = 2
    w = _long_ahead(rng, rng.randint(8, 10), seats)
    fcfs = bench.latency_in_steps(bench._engine(model, "solution", seats, 64, "fcfs", None), w)
    sjf = bench.latency_in_steps(bench._engine(model, "solution", seats, 64, "sjf", None), w)
    assert sjf == bench.latency_in_steps(bench._engine(model, "solution", seats, 64, "sjf", None), w)
    assert fcfs["short_mean_steps"] >= w.long_tokens
    assert w.short_tokens <= sjf["short_mean_steps"] < fcfs["short_mean_steps"] / 1.5, (fcfs, sjf)
    assert sjf["long_mean_steps"] >= w.long_tokens


def test_p44_framework_has_no_sjf_and_gets_one(model):
    rng = random.Random()
    w = _long_ahead(rng, rng.randint(6, 8), 2)
    fcfs = bench.latency_in_steps(bench._engine(model, "framework", 2, 64, "fcfs", None), w)
    sjf = bench.latency_in_steps(bench._engine(model, "framework", 2, 64, "sjf", None), w)
    assert fcfs == sjf


@pytest.mark.parametrize("impl, status, fewer", [("solution", PASS, {}),
                                                 ("framework", FAIL, dict(p44_requests=8, p44_long=30))])
def test_p44_target_small(model, impl, status, fewer):
    """The check's small-size P4.4: the solution passes; static batching (no SJF) measures exactly 1× and
    fails — whatever the workload, so it runs a shorter one."""
    result = BenchResult()
    bench.measure_policies(result, model, impl, {**bench.SIZES["small"], **fewer})
    assert _target("P4.4").evaluate(result).status == status, result.metrics
    if impl == "framework":
        assert result.metrics["short_latency_speedup"] == 1.0
    else:
        assert result.metrics["aged_max_wait"] <= result.metrics["wait_bound"]
