"""Module 0 lesson, framework: a batch-1 ``Linear(4096, 4096)`` loop that synchronises every step.

This is the loop the lesson traces. It is correct and it is slow on purpose:

- at batch 1 the layer is a matrix-vector product: 2 FLOPs per weight read, far left of the ridge
  point, so even a perfect kernel is bound by HBM bandwidth (a 4096² bf16 weight is 32 MiB);
- worse, each step pays the Python call, the kernel launch (~5 µs of CPU) and a
  ``torch.cuda.synchronize()`` round trip before the next launch can start, so the GPU sits idle
  between kernels. The trace shows it as white space between short kernels and a low GPU-busy %.
"""

from __future__ import annotations

from typing import Callable

import torch

from module0_profiling.timing import synchronize


def make_loop(layer: torch.nn.Linear, x: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
    """Return a callable that runs ``steps`` forward passes of ``layer`` on ``x``, one sync per step."""

    def loop() -> torch.Tensor:
        y = x
        with torch.no_grad():
            for _ in range(steps):
                y = layer(x)
                synchronize(x.device)  # a host round trip every step: the idle gaps the trace shows
        return y

    return loop
