"""Phase 7 framework: the DiT step as a plain eager PyTorch model, one device, explicit attention.

Attention materialises the ``[B, heads, S, S]`` scores, then softmax, then ``@ V``: at 256 px (S = 256)
that is nothing, at 1024 px (S = 4,096) the scores of one layer are 16 × 4,096² bf16 values = 512 MiB per
image, at a video-like S = 16,384 8 GiB per image (and the fp32 softmax twice that). Every elementwise op
(LayerNorm, modulate, GELU, gate + residual) is its own kernel over ``[B, S, H]``. Compare ``solution``:
fused attention (no S² tensor), torch.compile's fusions and CUDA graphs, the sequence split over GPUs.

Limit: one device by design — a group of more than one rank is refused.
"""

from __future__ import annotations

from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase7_dit_parallel.model import DiTModel, explicit_attention, forward
from phase7_dit_parallel.weights import DiTWeights


def build(weights: DiTWeights, *, group: TPGroup | None = None, parallel: str = "ulysses",
          compile: bool | None = None) -> DiTModel:
    """The eager model (``parallel`` and ``compile`` are accepted for the common contract and ignored)."""
    if group is not None and group.world > 1:
        raise TPError(f"the phase 7 framework runs on one device (got a group of {group.world} ranks): "
                      "build phase7_dit_parallel.solution for sequence parallelism")
    eager = lambda latents, timesteps, labels: forward(weights, latents, timesteps, labels, explicit_attention)
    return DiTModel("framework", weights.config, eager, mode="explicit attention, eager")
