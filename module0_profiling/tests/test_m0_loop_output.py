"""M0.4: the check compares the loop's output with the framework's, so a fast loop computing something else fails."""

import sys
import types

import torch

from module0_profiling import bench, checks


def _judge(error: float) -> bool:
    return next(t for t in checks.TARGETS if t.id == "M0.4").passes(error)


def test_a_loop_with_the_wrong_output_fails_m04(monkeypatch):
    wrong = types.ModuleType("m0_wrong_loop")

    def make_loop(layer, x, steps):
        scale = 1 + torch.rand(()).item()  # a fresh wrong factor, never 1
        return lambda: layer(x) * scale

    wrong.make_loop = make_loop
    monkeypatch.setitem(sys.modules, "m0_wrong_loop", wrong)
    error = bench.run("m0_wrong_loop", size="small").metrics["loop_output_error"]
    assert error > 1e-2 and not _judge(error)
    right = bench.run("solution", size="small").metrics["loop_output_error"]
    assert right <= 1e-2 and _judge(right)
