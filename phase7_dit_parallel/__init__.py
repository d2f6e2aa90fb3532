"""Phase 7 — DiT inference: the compute-bound side of the roofline, torch.compile, sequence parallelism.

Public contract (``framework``, ``solution`` and a learner's module provide)::

    def build(weights: DiTWeights, *, group: TPGroup | None = None, parallel: str = "ulysses",
              compile: bool | None = None) -> DiTModel
        # group: this rank and the world of sequence-parallel ranks (phase 6's TPGroup; None = one device)
        # parallel: "ulysses" (all-to-all: sequence split <-> head split) or "ring" (K/V passed round the ring)
        # compile: torch.compile + CUDA graphs for the static-shape step (default: on CUDA)

    class DiTModel:
        name: str; config: DiTConfig
        def __call__(self, latents: Tensor[B, C, H, W], timesteps: Tensor[B], labels: LongTensor[B])
            -> Tensor[B, out_channels, H, W]       # the noise prediction (and variance), same on every rank

- ``config``: ``DiTConfig``, presets (``xl2`` = DiT-XL/2, ``s2``, ``tiny``) and the latent sizes of the lesson.
- ``weights`` / ``model``: seeded random weights; the DiT forward in parts (``embed``, ``block``, ``final``,
  ``unpatchify``) with attention as a function ``attend(q, k, v)`` — the one interface the phase varies.
- ``oracle``: the same weights as ``diffusers``' ``DiTTransformer2DModel`` (the correctness reference).
- ``framework``: eager, one device, attention as explicit softmax(QKᵀ)V. ``solution``: fused attention
  (SDPA), torch.compile + CUDA graphs, and sequence parallelism over the group (``sequence_parallel``).
- ``sampler``: classifier-free-guided DDIM (``diffusers``' scheduler) around any ``DiTModel``.
- ``sp_cost``: phase 6's α-β model applied to Ulysses and ring: which wins at which sequence length and N.
"""

from __future__ import annotations

from types import ModuleType

from phase7_dit_parallel.config import LATENT_SIZES, PRESETS, DiTConfig

__all__ = ["DiTConfig", "PRESETS", "LATENT_SIZES", "load_impl"]


def load_impl(name: str) -> ModuleType:
    """``framework``, ``solution`` or a module path exposing ``build(weights, **options) -> DiTModel``."""
    from module0_profiling.impl import load_impl as _load

    return _load("phase7_dit_parallel", name)
