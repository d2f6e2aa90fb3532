"""DiT weights as plain tensors: one dataclass per block, one for the model, and seeded random values.

The layout follows the original DiT (facebookresearch/DiT): ONE timestep/label embedder shared by every
block (diffusers stores a copy per block; ``oracle`` copies ours into each), a fused q|k|v projection
(rows ``[q; k; v]``, heads contiguous inside each), the patch embedding as the conv weight ``[H, C, p, p]``.
Linear weights are ``[out, in]`` like ``nn.Linear``.

``random_weights`` is NOT DiT's training init: adaLN-Zero starts the modulation and the final layer at
zero, which would make every block the identity and hide a wrong chunk order. Here every tensor is normal
with std ``fan_in ** -0.5`` (biases 0.02), so gates, shifts and scales are O(1) and every path shows up in
the output. Limit: random weights make noise, not images; they exist for parity, shapes and timing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator

import torch

from phase7_dit_parallel.config import DiTConfig


def _tensor_fields(weights: object) -> list[str]:
    return [f.name for f in fields(weights) if isinstance(getattr(weights, f.name), torch.Tensor)]


@dataclass(frozen=True)
class BlockWeights:
    config: DiTConfig  # heads and eps: a block is callable on its own (``model.block``)
    ada_w: torch.Tensor  # [6H, H] -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
    ada_b: torch.Tensor
    qkv_w: torch.Tensor  # [3H, H]
    qkv_b: torch.Tensor
    out_w: torch.Tensor  # [H, H]
    out_b: torch.Tensor
    fc1_w: torch.Tensor  # [M, H]
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor  # [H, M]
    fc2_b: torch.Tensor

    def tensors(self) -> Iterator[torch.Tensor]:
        return (getattr(self, name) for name in _tensor_fields(self))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> BlockWeights:
        tensors = {name: getattr(self, name).to(device=device, dtype=dtype) for name in _tensor_fields(self)}
        return replace(self, **tensors)


@dataclass(frozen=True)
class DiTWeights:
    config: DiTConfig
    patch_w: torch.Tensor  # [H, C, p, p] (a stride-p conv, applied as a linear over flattened patches)
    patch_b: torch.Tensor
    t_fc1_w: torch.Tensor  # [H, frequency_dim]
    t_fc1_b: torch.Tensor
    t_fc2_w: torch.Tensor  # [H, H]
    t_fc2_b: torch.Tensor
    label_table: torch.Tensor  # [num_classes + 1, H]; the last row is the "no class" of guidance
    blocks: tuple[BlockWeights, ...]
    final_ada_w: torch.Tensor  # [2H, H] -> shift, scale
    final_ada_b: torch.Tensor
    final_w: torch.Tensor  # [p*p*out_channels, H], per token in (p, q, channel) order
    final_b: torch.Tensor

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_w.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_w.device

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every weight tensor, the blocks' included."""
        yield from (getattr(self, name) for name in _tensor_fields(self))
        for b in self.blocks:
            yield from b.tensors()

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> DiTWeights:
        """The same weights in ``dtype`` on ``device`` (either may be None: unchanged)."""
        tensors = {name: getattr(self, name).to(device=device, dtype=dtype) for name in _tensor_fields(self)}
        return replace(self, blocks=tuple(b.to(dtype, device) for b in self.blocks), **tensors)

    def num_parameters(self) -> int:
        """Parameter count (the label table included, as in the DiT paper's 675 M for XL/2)."""
        return sum(t.numel() for t in self.tensors())


def random_weights(config: DiTConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> DiTWeights:
    """Seeded weights (drawn in fp32 on the CPU, so the same seed gives the same model on any device)."""
    g = torch.Generator().manual_seed(seed)
    h, m, c = config.hidden, config.mlp_hidden, config.in_channels
    p = config.patch

    def linear(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
        return w, torch.randn(out_features, generator=g) * 0.02

    def block() -> BlockWeights:
        ada_w, ada_b = linear(6 * h, h)
        qkv_w, qkv_b = linear(3 * h, h)
        out_w, out_b = linear(h, h)
        fc1_w, fc1_b = linear(m, h)
        fc2_w, fc2_b = linear(h, m)
        return BlockWeights(config, ada_w, ada_b, qkv_w, qkv_b, out_w, out_b, fc1_w, fc1_b, fc2_w, fc2_b)

    patch_w, patch_b = linear(h, c * p * p)
    t_fc1_w, t_fc1_b = linear(h, config.frequency_dim)
    t_fc2_w, t_fc2_b = linear(h, h)
    label_table = torch.randn(config.num_classes + 1, h, generator=g)
    blocks = tuple(block() for _ in range(config.depth))
    final_ada_w, final_ada_b = linear(2 * h, h)
    final_w, final_b = linear(p * p * config.out_channels, h)
    weights = DiTWeights(config, patch_w.view(h, c, p, p), patch_b, t_fc1_w, t_fc1_b, t_fc2_w, t_fc2_b,
                         label_table, blocks, final_ada_w, final_ada_b, final_w, final_b)
    return weights.to(dtype, device)
