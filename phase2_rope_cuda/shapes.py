"""Input checks of the RoPE contract: one clear line per mistake, naming the fix.

Shared by the reference and the CUDA wrappers so every implementation rejects the same inputs
with the same words. Checks cost no GPU work (no ``.item()``): positions outside the cache are the
caller's responsibility (see ``check_positions_in_range`` for a debug check that syncs).
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
POSITION_DTYPES = (torch.int64, torch.int32)


class RopeInputError(ValueError):
    """A q/k/positions/cache combination the RoPE contract does not accept."""


def check_rope_inputs(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3:
        raise RopeInputError(
            f"q and k must be [tokens, heads, head_dim]; got q {tuple(q.shape)}, k {tuple(k.shape)} "
            "(reshape a [tokens, heads*head_dim] projection with .view(tokens, heads, head_dim))"
        )
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise RopeInputError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on tokens and head_dim")
    if q.dtype != k.dtype or q.dtype not in SUPPORTED_DTYPES:
        raise RopeInputError(f"q and k must share one dtype among float32/bfloat16/float16; got {q.dtype}, {k.dtype}")
    head_dim = q.shape[2]
    if head_dim % 2:
        raise RopeInputError(f"head_dim must be even for rotate-half RoPE, got {head_dim}")
    if positions.dim() != 1 or positions.shape[0] != q.shape[0]:
        raise RopeInputError(f"positions must be [tokens] = [{q.shape[0]}], got {tuple(positions.shape)}")
    if positions.dtype not in POSITION_DTYPES:
        raise RopeInputError(f"positions must be int64 or int32, got {positions.dtype} (use positions.long())")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_dim:
        raise RopeInputError(
            f"cos_sin_cache must be [max_position, head_dim={head_dim}], got {tuple(cos_sin_cache.shape)} "
            "(build it with phase2_rope_cuda.build_cos_sin_cache(head_dim, max_position))"
        )
    if cos_sin_cache.dtype != torch.float32:
        raise RopeInputError(f"cos_sin_cache must be float32, got {cos_sin_cache.dtype} (use .float())")
    devices = {t.device for t in (q, k, positions, cos_sin_cache)}
    if len(devices) != 1:
        raise RopeInputError(f"q, k, positions and cos_sin_cache must be on one device, got {sorted(map(str, devices))}")


def check_positions_in_range(positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Debug check (synchronises): every position indexes a row of the cache."""
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= cos_sin_cache.shape[0]):
        raise RopeInputError(
            f"positions must lie in [0, {cos_sin_cache.shape[0]}); got [{int(positions.min())}, {int(positions.max())}] "
            "(build a longer cache)"
        )
