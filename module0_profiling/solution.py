"""Module 0 lesson, solution: the same loop captured once in a CUDA graph and replayed.

A CUDA graph records the kernels of all ``steps`` forward passes; one ``replay()`` launches them
with a single CPU call and no host round trip in between, so consecutive kernels run back to back.
What remains is the kernel itself: a GEMV bound by memory bandwidth (the weight read once per step;
a 32 MiB bf16 weight may stay in a 50 MB L2, which is why the graph can even beat the HBM figure).
On a CPU there is nothing to capture: the loop runs eagerly without the per-step synchronisation.
"""

from __future__ import annotations

from typing import Callable

import torch

from module0_profiling.timing import capture_cuda_graph


def make_loop(layer: torch.nn.Linear, x: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
    """Return a callable that runs ``steps`` forward passes of ``layer`` on ``x`` as one graph replay."""
    out = torch.empty(x.shape[0], layer.out_features, dtype=x.dtype, device=x.device)

    weight_t = layer.weight.t()

    def body() -> None:
        with torch.no_grad():
            for _ in range(steps):
                if layer.bias is None:
                    torch.mm(x, weight_t, out=out)
                else:
                    torch.addmm(layer.bias, x, weight_t, out=out)  # one kernel per step, as F.linear

    if x.device.type != "cuda":

        def eager() -> torch.Tensor:
            body()
            return out

        return eager

    graph = capture_cuda_graph(body)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay
