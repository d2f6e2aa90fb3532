"""The row GEMV's launch variants that ``scripts/gpu_int4_step.py`` times against the product in the whole
decode step: ``RowVariant`` flips one launch choice the product fixes (``launch._row_gemv``: the winners), and
``use_row_variant`` makes an ``Int4Engine``'s one-row projections run it, optionally with other tiles per
shape. Same arithmetic as the product's launch: only scheduling changes, so the tokens must agree.
"""

from __future__ import annotations

import dataclasses

import torch
import triton

from phase0_prototype.kernels.gemv import launch_options
from phase5_quantization.kernels.configs import row_gemv_config
from phase5_quantization.kernels.launch import launch_state
from phase5_quantization.kernels.w4a16 import NIBBLE_MASKS, NONE, RESIDUAL, SWIGLU
from phase5_quantization.kernels.w4a16_rows import _row_gemv_kernel

# (n, k, swiglu) -> (BLOCK_N, BLOCK_KW, SPLIT_K, num_warps, maxnreg): row-GEMV tiles per projection shape
Tiles = dict[tuple[int, int, bool], tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class RowVariant:
    """The row GEMV's launch choices; the defaults are the product's."""

    early: bool = False  # let the next kernel launch before this one's PDL wait (phase 0's GEMV does)
    prefetch: bool = True  # scales, zero-points and the residual requested early (the kernel's PREFETCH)
    tail: bool = True  # a row's last words as one smaller slab, not a masked full one (TAIL_KW)


def row_gemv(x: torch.Tensor, w, variant: RowVariant, *, norm_weight=None, eps: float = 0.0, residual=None,
             swiglu: bool = False, out=None, config: dict | None = None) -> torch.Tensor:
    """``launch.w4a16_linear`` through the row GEMV under ``variant``: ``x [M ≤ 8, K]`` contiguous, ``w`` in
    the row layout."""
    M, K = x.shape
    N = w.n // 2 if swiglu else w.n
    out = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    res = residual if residual is not None else out
    epilogue = SWIGLU if swiglu else RESIDUAL if residual is not None else NONE
    norm = norm_weight is not None
    c = row_gemv_config(N, K, M, swiglu, norm)
    c.update(config or {})
    bkw = c["BLOCK_KW"]
    split, ws, locks, pdl, extra = launch_state(c, M, N, x.device)
    rem = (K // 8) % bkw
    tail = triton.next_power_of_2(rem) if rem and split == 1 and variant.tail else 0
    _row_gemv_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x, w.qweight, w.scales, w.zeros, out, res, norm_weight if norm else x, ws, locks, M, N, K // 8,
        x.stride(0), out.stride(0), res.stride(0), eps, *NIBBLE_MASKS, GROUP=w.group_size, NORM=norm,
        EPILOGUE=epilogue, USE_PDL=pdl, EARLY=variant.early, BLOCK_B=triton.next_power_of_2(M),
        BLOCK_N=c["BLOCK_N"], BLOCK_KW=bkw, SPLIT_K=split, PREFETCH=variant.prefetch,
        TAIL_KW=tail if tail < bkw else 0, **extra, **launch_options(pdl))
    return out


class VariantLinear:
    """A ``QuantLinear`` whose one-row calls on a GPU run ``row_gemv`` under ``variant`` (with ``tiles``'
    entry for its shape, if any); every other call is the product's."""

    def __init__(self, linear, variant: RowVariant, tiles: Tiles | None = None):
        self.linear, self.variant, self.tiles = linear, variant, tiles or {}

    def __call__(self, x: torch.Tensor, *, norm_weight=None, eps: float = 0.0, residual=None,
                 swiglu: bool = False, out=None) -> torch.Tensor:
        if not (x.is_cuda and x.dim() == 2 and x.shape[0] == 1):
            return self.linear(x, norm_weight=norm_weight, eps=eps, residual=residual, swiglu=swiglu, out=out)
        w = self.linear.kernel_weight(x.device)
        key = (w.n // 2 if swiglu else w.n, w.k, swiglu)
        config = None
        if key in self.tiles:
            block_n, block_kw, split, warps, maxnreg = self.tiles[key]
            config = dict(BLOCK_N=block_n, BLOCK_KW=block_kw, SPLIT_K=split, num_warps=warps)
            if maxnreg:
                config["maxnreg"] = maxnreg
        return row_gemv(x.contiguous(), w, self.variant, norm_weight=norm_weight, eps=eps, residual=residual,
                        swiglu=swiglu, out=out, config=config)

    def nbytes(self) -> int:
        return self.linear.nbytes()


PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def variant_layers(layers: list, variant: RowVariant, tiles: Tiles | None = None) -> list:
    """Phase 0's ``LayerWeights`` with each projection a ``VariantLinear``."""
    return [dataclasses.replace(lw, **{p: VariantLinear(getattr(lw, p), variant, tiles) for p in PROJECTIONS})
            for lw in layers]


def use_row_variant(engine, variant: RowVariant, tiles: Tiles | None = None) -> None:
    """Make ``engine`` (an ``Int4Engine``, before its graphs are captured) run its one-row projections under
    ``variant`` and ``tiles``."""
    engine.weights.layers = variant_layers(engine.weights.layers, variant, tiles)
