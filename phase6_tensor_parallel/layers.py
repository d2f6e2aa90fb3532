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

``shard`` pieces take the full weight and return this rank's part; ``split_sizes`` lets a fused weight
(q|k|v, gate|up) be split per block so every rank gets the same heads of q, k and v (see ``shard_fused``).
A weight is a float matrix or a linear object (phase 5's INT4 ``QuantLinear``, ``DenseLinear``) that can
``take_rows``/``take_cols`` and is called on its input (``project``): tensor parallelism and quantization are
two transforms of one model. An INT4 row-parallel shard must hold whole quantization groups.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from phase6_tensor_parallel.dist_env import TPError, TPGroup


def project(x: torch.Tensor, w) -> torch.Tensor:
    """``x @ Wᵀ`` for a matrix; a linear object (a parallel layer, phase 5's ``QuantLinear``) calls itself."""
    return F.linear(x, w) if isinstance(w, torch.Tensor) else w(x)


def _check_divisible(size: int, world: int, what: str) -> int:
    if size % world:
        raise TPError(f"{what}={size} is not divisible by the tensor-parallel size {world}: "
                      f"choose a --tp that divides {size}")
    return size // world


def check_whole_groups(part: int, group_size: int, world: int, what: str) -> None:
    """An INT4 row-parallel shard of ``part`` input columns must hold whole groups (each keeps its scale)."""
    if part % group_size:
        raise TPError(f"--tp {world} leaves {part} of the {what} per rank, not whole INT4 groups of {group_size}: "
                      f"choose a --quant-group-size that divides {part} or another --tp")


def row_index(sizes: Sequence[int], group: TPGroup, names: Sequence[str]) -> torch.Tensor:
    """This rank's rows of a weight made of blocks of ``sizes`` rows: its contiguous share of each block."""
    parts, start = [], 0
    for size, name in zip(sizes, names, strict=True):
        part = _check_divisible(size, group.world, name)
        parts.append(torch.arange(start + group.rank * part, start + (group.rank + 1) * part))
        start += size
    return torch.cat(parts)


def _take_rows(w, index: torch.Tensor):
    return w[index.to(w.device)] if isinstance(w, torch.Tensor) else w.take_rows(index)


def shard_rows(w, group: TPGroup, what: str = "output features"):
    """This rank's contiguous block of rows (dim 0)."""
    return _take_rows(w, row_index([w.shape[0]], group, [what]))


def shard_cols(w, group: TPGroup, what: str = "input features"):
    """This rank's contiguous block of columns (dim 1)."""
    part = _check_divisible(w.shape[1], group.world, what)
    start, end = group.rank * part, (group.rank + 1) * part
    if isinstance(w, torch.Tensor):
        return w[:, start:end].contiguous()
    if hasattr(w, "group_size"):
        check_whole_groups(part, w.group_size, group.world, what)
    return w.take_cols(start, end)


def shard_fused(w, sizes: Sequence[int], group: TPGroup, names: Sequence[str]):
    """Split a fused weight into its blocks (rows ``sizes``), shard each block's rows, re-fuse.

    ``qkv_proj`` is ``[q | k | v]``: a naive contiguous shard would give rank 0 all of q and rank 1 k and v.
    Sharding each block gives every rank its q heads AND the k/v heads they attend to (GQA groups are
    contiguous: q head h uses kv head h // group_size, so q heads [r·Hq/N, ...) pair with kv heads [r·Hkv/N, ...)).
    """
    if sum(sizes) != w.shape[0]:
        raise TPError(f"blocks of {list(sizes)} rows do not make the fused weight's {w.shape[0]} rows")
    return _take_rows(w, row_index(sizes, group, names))


class ColumnParallelLinear:
    """``y = x @ W.T`` with W's output rows split across ranks; ``gather_output`` all-gathers the slices."""

    def __init__(self, full_weight, group: TPGroup, *, gather_output: bool = True, shard_weight=None):
        self.group = group
        self.gather_output = gather_output
        self.weight = shard_rows(full_weight, group) if shard_weight is None else shard_weight
        self.out_features = self.weight.shape[0] * group.world

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = project(x, self.weight)
        return self.group.all_gather_last(y) if self.gather_output else y


class RowParallelLinear:
    """``y = x @ W.T`` with W's input columns split across ranks.

    ``x`` is this rank's slice of the input features (``input_is_parallel=True``, what a non-gathering
    column-parallel layer produced) or the full input (sliced here). ``partial`` (and calls with
    ``reduce_output=False``) return this rank's partial sum, so the caller can start the all-reduce itself
    (asynchronously, to overlap it).
    """

    def __init__(self, full_weight, group: TPGroup, *, input_is_parallel: bool = True, reduce_output: bool = True):
        self.group = group
        self.input_is_parallel = input_is_parallel
        self.reduce_output = reduce_output
        self.in_part = _check_divisible(full_weight.shape[1], group.world, "input features")
        self.weight = shard_cols(full_weight, group)

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = x[..., self.group.rank * self.in_part:(self.group.rank + 1) * self.in_part]
        return project(x, self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.partial(x)
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
