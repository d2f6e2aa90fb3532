"""DiT shapes: the model preset (DiT-XL/2 and small ones for CPU) and the latent sizes the lesson sweeps.

A DiT (Peebles & Xie, 2023) cuts a ``[B, C, H, W]`` latent into ``(H/p)·(W/p)`` patches of ``p × p``: that
is the sequence length, and every denoising step runs the whole sequence through every block — no KV cache,
no decode step. So the token count grows with the square of the resolution (and with frames, for video),
attention with its square again, and the step is compute-bound at every size that matters (see ``bench``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiTConfig:
    depth: int = 28  # transformer blocks
    hidden: int = 1152
    heads: int = 16
    patch: int = 2
    in_channels: int = 4  # the VAE latent's channels
    learn_sigma: bool = True  # the output carries the predicted noise and a variance: 2 × in_channels
    num_classes: int = 1000  # class-conditional; index num_classes is the "no class" of guidance
    mlp_ratio: float = 4.0
    frequency_dim: int = 256  # the sinusoidal timestep embedding before its MLP
    eps: float = 1e-6  # LayerNorm epsilon of the blocks and the final layer

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)

    def tokens(self, latent_size: int) -> int:
        """Sequence length of a square latent of side ``latent_size``."""
        return (latent_size // self.patch) ** 2


PRESETS = {
    "xl2": DiTConfig(),  # DiT-XL/2: 675 M parameters
    "s2": DiTConfig(depth=12, hidden=384, heads=6),  # DiT-S/2: 33 M parameters, CPU benches
    "tiny": DiTConfig(depth=2, hidden=64, heads=4, num_classes=10),  # tests
}

# Latent side (image side / 8, the VAE's downsampling) -> tokens with patch 2. The last is a video-like
# sequence (16 frames of 256 px have the same 16,384 tokens as one 2,048 px image).
LATENT_SIZES = {"256px": 32, "512px": 64, "1024px": 128, "video-16k": 256}
