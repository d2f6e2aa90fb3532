"""Variants of the solution engine that lessons, tests and GPU scripts compare against; not the product path.

- ``InductorStepEngine``: the decode step as ``torch.compile`` of the PyTorch code (P0.3's lesson: what
  inductor makes of the step, against the hand-written Triton step ``SolutionEngine`` runs on a GPU);
  ``reduction=False`` keeps cuBLAS for the projections, ``tune=True`` turns on inductor's coordinate-descent
  tuning of its kernels' block sizes (as gpt-fast does);
- ``TritonStepEngine``: the Triton step without CUDA graphs as well (eager on a GPU, ``TRITON_INTERPRET=1``
  on a CPU), so tests can compare it with the PyTorch step;
- ``pdl_off()``: the decode kernels launched without programmatic dependent launch, to time what it buys.

Figures of these comparisons: ``phase0_prototype/NOTES.md``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.solution import SolutionEngine
from phase0_prototype.sources import LoadedModel


class InductorStepEngine(SolutionEngine):
    """The solution engine with its decode step compiled by inductor at every batch size."""

    def __init__(self, model: LoadedModel, *, reduction: bool = True, tune: bool = False, **options):
        self.tune = tune
        self.reduction_rows = SolutionEngine.reduction_rows if reduction else 0
        super().__init__(model, **options)

    def _triton_for(self, batch: int) -> bool:
        return False

    def _graph_for(self, batch: int):
        import torch._inductor.config

        with torch._inductor.config.patch(coordinate_descent_tuning=self.tune):  # compiled during the warm-up
            return super()._graph_for(batch)


class TritonStepEngine(SolutionEngine):
    """The solution engine running the Triton decode step with or without CUDA graphs."""

    def _triton_for(self, batch: int) -> bool:
        from phase0_prototype.kernels.step import unsupported_reason

        reason = unsupported_reason(self.config, batch, self.weights)
        if reason:
            raise ModelError(f"the Triton decode step cannot run this engine: {reason}; use SolutionEngine")
        return True


@contextmanager
def pdl_off():
    """Inside: every decode kernel launches without programmatic dependent launch (``gemv.pdl_enabled``)."""
    from phase0_prototype.kernels import gemv

    saved = dict(gemv._PDL)
    gemv._PDL.update({i: False for i in range(torch.cuda.device_count())})
    try:
        yield
    finally:
        gemv._PDL.clear()
        gemv._PDL.update(saved)
