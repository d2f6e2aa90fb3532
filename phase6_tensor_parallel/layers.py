"""Megatron's tensor-parallel layers, each built from its shard of the FULL weight (rank, world size).

A linear layer ``y = x @ W.T`` with ``W`` of shape ``[out, in]`` can be split two ways:

- **column-parallel** (``ColumnParallelLinear``): rank r keeps the rows ``W[r·out/N : (r+1)·out/N]`` and computes
  its slice of the output features from the full input. Gathering the slices (all-gather along the last
  dim) rebuilds ``y``; not gathering leaves each rank with its own output features — exactly what the next
  row-parallel layer wants as input.
- **row-parallel** (``RowParallelLinear``): rank r keeps the columns ``W[:, r·in/N : (r+1)·in/N]``, takes its
  slice of the input features and produces a partial ``y``; the sum over ranks (all-reduce) is ``y``.

``VocabParallelEmbedding`` splits the table by vocabulary rows: a rank looks up the ids it owns, writes zeros
for the others, and the all-reduce fills every row. ``ParallelLMHead`` is a column-parallel vocab projection
whose logits slices are all-gathered.

``shard`` pieces take the full tensor and return this rank's part; ``split_sizes`` lets a fused weight
(q|k|v, gate|up) be split per block so every rank gets the same heads of q, k and v (see ``shard_fused``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from phase6_tensor_parallel.dist_env import TPError, TPGroup


def _check_divisible(size: int, world: int, what: str) -> int:
    if size % world:
        raise TPError(f"{what}={size} is not divisible by the tensor-parallel size {world}: "
                      f"choose a --tp that divides {size}")
    return size // world


def shard_rows(w: torch.Tensor, group: TPGroup, what: str = "output features") -> torch.Tensor:
    """This rank's contiguous block of rows (dim 0)."""
    part = _check_divisible(w.shape[0], group.world, what)
    return w[group.rank * part:(group.rank + 1) * part].contiguous()


def shard_cols(w: torch.Tensor, group: TPGroup, what: str = "input features") -> torch.Tensor:
    """This rank's contiguous block of columns (dim 1)."""
    part = _check_divisible(w.shape[1], group.world, what)
    return w[:, group.rank * part:(group.rank + 1) * part].contiguous()


def shard_fused(w: torch.Tensor, sizes: Sequence[int], group: TPGroup, names: Sequence[str]) -> torch.Tensor:
    """Split a fused weight into its blocks (rows ``sizes``), shard each block's rows, re-fuse.

    ``qkv_proj`` is ``[q | k | v]``: a naive contiguous shard would give rank 0 all of q and rank 1 k and v.
    Sharding each block gives every rank its q heads AND the k/v heads they attend to (GQA groups are
    contiguous: q head h uses kv head h // group_size, so q heads [r·Hq/N, ...) pair with kv heads [r·Hkv/N, ...)).
    """
    blocks = torch.split(w, list(sizes), dim=0)
    return torch.cat([shard_rows(b, group, n) for b, n in zip(blocks, names, strict=True)], dim=0)


class ColumnParallelLinear:
    """``y = x @ W.T`` with W's output rows split across ranks; ``gather_output`` all-gathers the slices."""

    def __init__(self, full_weight: torch.Tensor, group: TPGroup, *, gather_output: bool = True,
                 shard_weight: torch.Tensor | None = None):
        self.group = group
        self.gather_output = gather_output
        self.weight = shard_rows(full_weight, group) if shard_weight is None else shard_weight
        self.out_features = self.weight.shape[0] * group.world

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        return self.group.all_gather_last(y) if self.gather_output else y


class RowParallelLinear:
    """``y = x @ W.T`` with W's input columns split across ranks.

    ``x`` is this rank's slice of the input features (``input_is_parallel=True``, what a non-gathering
    column-parallel layer produced) or the full input (sliced here). ``reduce_output=False`` returns the
    partial sum so the caller can start the all-reduce itself (asynchronously, to overlap it).
    """

    def __init__(self, full_weight: torch.Tensor, group: TPGroup, *, input_is_parallel: bool = True,
                 reduce_output: bool = True):
        self.group = group
        self.input_is_parallel = input_is_parallel
        self.reduce_output = reduce_output
        self.in_part = _check_divisible(full_weight.shape[1], group.world, "input features")
        self.weight = shard_cols(full_weight, group)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = x[..., self.group.rank * self.in_part:(self.group.rank + 1) * self.in_part]
        y = F.linear(x, self.weight)
        return self.group.all_reduce(y) if self.reduce_output else y


class VocabParallelEmbedding:
    """Embedding with the vocabulary rows split: masked local lookup, then all-reduce."""

    def __init__(self, full_weight: torch.Tensor, group: TPGroup):
        self.group = group
        self.vocab = full_weight.shape[0]
        part = _check_divisible(self.vocab, group.world, "vocab_size")
        self.start, self.end = group.rank * part, (group.rank + 1) * part
        self.weight = shard_rows(full_weight, group, "vocab_size")

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.start) & (ids < self.end)
        local = torch.where(mine, ids - self.start, torch.zeros_like(ids))  # any valid row; zeroed below
        out = F.embedding(local, self.weight) * mine.unsqueeze(-1).to(self.weight.dtype)
        return self.group.all_reduce(out)


class ParallelLMHead(ColumnParallelLinear):
    """The vocab projection, column-parallel over vocabulary rows, logits all-gathered (every rank samples)."""

    def __init__(self, full_weight: torch.Tensor, group: TPGroup):
        _check_divisible(full_weight.shape[0], group.world, "vocab_size")
        super().__init__(full_weight, group, gather_output=True)
