"""What the bench feeds the kernels, and the bytes a RoPE must move for it.

Bytes that must cross DRAM (the counted work, the same for every implementation): q and k read once
and written once, plus one cos/sin row (4·D bytes of fp32) per DISTINCT position used. A RoPE that
moves more (a scratch copy, re-reading cos/sin from DRAM) gets no credit for the extra bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from phase2_rope_cuda.reference import build_cos_sin_cache


@dataclass(frozen=True)
class RopeShape:
    tokens: int = 16384
    q_heads: int = 32  # TinyLlama-1.1B: 32 query heads, 4 key/value heads, head_dim 64
    kv_heads: int = 4
    head_dim: int = 64
    dtype: torch.dtype = torch.bfloat16
    max_position: int = 65536  # positions are drawn at random in [0, max_position)

    def with_tokens(self, tokens: int) -> "RopeShape":
        return replace(self, tokens=tokens)

    @property
    def qk_bytes(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.tokens * (self.q_heads + self.kv_heads) * self.head_dim * elem

    @property
    def qk_elements(self) -> int:
        return self.tokens * (self.q_heads + self.kv_heads) * self.head_dim

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return f"{self.tokens} tokens, q {self.q_heads} heads, k {self.kv_heads} heads, head_dim {self.head_dim}, {dt}"


@dataclass
class RopeInputs:
    q: torch.Tensor
    k: torch.Tensor
    positions: torch.Tensor
    cache: torch.Tensor
    distinct_positions: int
    hf_cos: torch.Tensor | None = None  # [1, tokens, D] in q's dtype: what HF hands liger-kernel
    hf_sin: torch.Tensor | None = None

    @property
    def args(self) -> tuple:
        return self.q, self.k, self.positions, self.cache


def counted_bytes(shape: RopeShape, distinct_positions: int) -> float:
    """q and k read + written once, one fp32 cos/sin row per distinct position read once."""
    return 2 * shape.qk_bytes + distinct_positions * shape.head_dim * 4


def counted_flops(shape: RopeShape) -> float:
    """Two multiplies and one add (or an FMA and a multiply) per output element."""
    return 3.0 * shape.qk_elements


def make_inputs(shape: RopeShape, device: str, seed: int, cache: torch.Tensor | None = None) -> RopeInputs:
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(shape.tokens, shape.q_heads, shape.head_dim, generator=g, device=device).to(shape.dtype)
    k = torch.randn(shape.tokens, shape.kv_heads, shape.head_dim, generator=g, device=device).to(shape.dtype)
    positions = torch.randint(0, shape.max_position, (shape.tokens,), generator=g, device=device)
    if cache is None:
        cache = build_cos_sin_cache(shape.head_dim, shape.max_position, device=device)
    distinct = int(torch.unique(positions).numel())
    return RopeInputs(q, k, positions, cache, distinct)


def input_sets(shape: RopeShape, device: str, l2_bytes: float, max_sets: int = 64) -> list[RopeInputs]:
    """Enough independent input sets that rotating among them streams ≥ 3× L2 from DRAM."""
    per_set = 2 * shape.qk_bytes
    count = int(min(max_sets, max(2, -(-3 * l2_bytes // max(per_set, 1)))))
    cache = build_cos_sin_cache(shape.head_dim, shape.max_position, device=device)
    return [make_inputs(shape, device, seed=1000 + i, cache=cache) for i in range(count)]


def error_ratio(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> float:
    """max |a − e| / (atol + rtol·|e|): ≤ 1 means within torch.testing's tolerance."""
    a, e = actual.double(), expected.double()
    return float(((a - e).abs() / (atol + rtol * e.abs())).max()) if a.numel() else 0.0


TOLERANCE = {torch.float32: (1e-5, 1.3e-6), torch.bfloat16: (1e-5, 1.6e-2), torch.float16: (1e-5, 1e-3)}
