"""Phase 7 solution: fused attention, torch.compile with CUDA graphs, and sequence parallelism.

- Attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels): no ``[S, S]`` tensor
  in memory, so the step's memory grows with S, not S².
- One device, ``compile`` on (the default on CUDA): ``torch.compile(mode="reduce-overhead")`` — inductor's
  fusions (LayerNorm + modulate, GELU, gate + residual become one kernel each) AND CUDA graphs. The
  sampler's step has a static shape (same latents, batch and dtype every step), which is exactly what a
  graph replay needs; at small latents the step is hundreds of short kernels and launch-bound, so the
  replay pays there, while the fusions pay at every size. ``max-autotune-no-cudagraphs`` would leave the
  launches in, and ``max-autotune`` adds minutes of GEMM autotuning for cuBLAS-sized matmuls. The weights
  are plain tensors, not module parameters: ``mark_static_address`` tells the graphs not to copy them into
  the graph's input buffers on every replay. Each call clones its output (a graph's output is overwritten
  by the next replay). CPU stays eager by default: inductor's CPU compile is slow and not the lesson.
- A group of more than one rank: the tokens are split over the ranks (``sequence_parallel.sp_forward``,
  ``parallel`` = ``"ulysses"`` or ``"ring"``), eager. Limit: compile applies to the one-device step only.
"""

from __future__ import annotations

import torch

from phase6_tensor_parallel.dist_env import TPGroup
from phase7_dit_parallel.model import DiTModel, forward, sdpa_attention
from phase7_dit_parallel.weights import DiTWeights

PARALLEL = ("ulysses", "ring")


def _compiled_step(weights: DiTWeights):
    for t in weights.tensors():
        torch._dynamo.mark_static_address(t)

    def step(latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return forward(weights, latents, timesteps, labels, sdpa_attention)

    compiled = torch.compile(step, mode="reduce-overhead", dynamic=False, fullgraph=True)

    def replay(latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the last call's graph outputs may be reused
        return compiled(latents, timesteps, labels).clone()

    return replay


def build(weights: DiTWeights, *, group: TPGroup | None = None, parallel: str = "ulysses",
          compile: bool | None = None) -> DiTModel:
    """This rank's model; with ``group.world > 1`` every rank must call it with the same inputs."""
    if parallel not in PARALLEL:
        raise ValueError(f"unknown sequence parallelism {parallel!r}: choose one of {', '.join(PARALLEL)}")
    if group is not None and group.world > 1:
        # Imported here: one-device use (and its tests) never needs the collectives' module.
        from phase7_dit_parallel.sequence_parallel import sp_forward

        def sp_step(latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return sp_forward(weights, latents, timesteps, labels, group, parallel, sdpa_attention)

        mode = f"SDPA, {parallel} over {group.world} ranks"
        return DiTModel("solution", weights.config, sp_step, mode=mode)
    if compile is None:
        compile = weights.device.type == "cuda"
    if compile:
        return DiTModel("solution", weights.config, _compiled_step(weights),
                        mode="SDPA, torch.compile reduce-overhead (CUDA graphs)")
    eager = lambda latents, timesteps, labels: forward(weights, latents, timesteps, labels, sdpa_attention)
    return DiTModel("solution", weights.config, eager, mode="SDPA, eager")
