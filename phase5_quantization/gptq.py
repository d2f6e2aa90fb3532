"""GPTQ: round one column at a time and push its rounding error onto the columns not yet rounded.

For a linear with calibration inputs X, the output error of a weight change is ``δW · H · δWᵀ`` with
``H = XᵀX / n``. GPTQ rounds column j, then updates the remaining columns by
``−err_j · H⁻¹[j, j:] / H⁻¹[j, j]`` (the optimal compensation, Optimal Brain Surgeon), using the upper
Cholesky factor of H⁻¹ so the whole pass is one factorisation plus blocked rank-``block`` updates (columns in
blocks of 128; the error of a block is pushed onto later columns with one matmul).

Group parameters: without act-order, each group's scale/zero-point is computed when the pass reaches the
group's first column, from the already-updated weights (the usual GPTQ). With ``act_order`` (columns in
decreasing ``diag(H)``, the most-used first) the group parameters are fixed up front from the original
weights ("static groups"), so groups stay contiguous and the packed layout is the same as RTN's and AWQ's.

Calibration activations come from one pass of the float model (not layer-by-layer through the already
quantized layers): simpler, and the comparison with AWQ uses the same activations.
"""

from __future__ import annotations

import torch

from phase5_quantization.framework import quantize_linears
from phase5_quantization.model import LinearLlama, calibration_inputs
from phase5_quantization.packing import (
    GROUP_SIZE,
    QMAX,
    QuantizedWeight,
    check_divisible,
    from_codes,
    group_params,
)


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``2 XᵀX / n`` in float64."""
    x = x.double()
    return 2.0 * x.t() @ x / x.shape[0]


def gptq_weight(w: torch.Tensor, h: torch.Tensor, group_size: int = GROUP_SIZE, *, block: int = 128,
                damp: float = 0.01, act_order: bool = False, name: str = "weight") -> QuantizedWeight:
    """GPTQ of one matrix ``w [out, in]`` given its Hessian ``h [in, in]``."""
    check_divisible(name, tuple(w.shape), group_size)
    if block % group_size and group_size % block:
        raise ValueError(f"block {block} and group size {group_size} must divide one another")
    out, inp = w.shape
    W = w.double().clone()
    H = h.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    n_groups = inp // group_size
    dev = W.device
    scales = torch.empty(out, n_groups, dtype=torch.float16, device=dev)
    zeros = torch.empty(out, n_groups, dtype=torch.uint8, device=dev)
    if act_order:
        scales, zeros = group_params(W, group_size)
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        perm = torch.arange(inp, device=dev)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(inp, dtype=H.dtype, device=dev)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros(out, inp, dtype=torch.uint8, device=dev)
    perm_list = perm.tolist()  # column order on the host: one device read, not one per column
    for b0 in range(0, inp, block):
        b1 = min(b0 + block, inp)
        W1, E1, Hb = W[:, b0:b1].clone(), torch.zeros(out, b1 - b0, dtype=W.dtype,
                                                      device=dev), hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = perm_list[b0 + j]
            grp = col // group_size
            if not act_order and col % group_size == 0:  # natural order: the group starts here
                end = min(j + group_size, b1 - b0)
                rest = W1[:, j:end] if end - j == group_size else torch.cat([W1[:, j:], W[:, b1:b1 + group_size - (end - j)]], 1)
                scales[:, grp:grp + 1], zeros[:, grp:grp + 1] = group_params(rest, group_size)
            s, z = scales[:, grp].double(), zeros[:, grp].double()
            q = (torch.round(W1[:, j] / s) + z).clamp(0, QMAX)
            codes[:, col] = q.to(torch.uint8)
            err = (W1[:, j] - (q - z) * s) / Hb[j, j]
            W1[:, j:] -= err[:, None] * Hb[j, j:][None, :]
            E1[:, j] = err
        W[:, b1:] -= E1 @ hinv[b0:b1, b1:]
    return from_codes(codes, scales, zeros, group_size)


def quantize(model: LinearLlama, calibration_ids, *, group_size: int = GROUP_SIZE, act_order: bool = False,
             damp: float = 0.01, calib_tokens: int = 4096, quantize_lm_head: bool = False) -> LinearLlama:
    """GPTQ every projection of a float ``LinearLlama`` with Hessians from ``calib_tokens`` tokens of
    ``calibration_ids`` (windows of 256 spread over the text, as AWQ's)."""
    if calibration_ids is None:
        from phase0_prototype.errors import ModelError

        raise ModelError("GPTQ needs calibration text (token ids): pass calibration_ids, or use RTN")
    for i, layer in enumerate(model.linears):
        for name, lin in layer.items():
            check_divisible(f"layers.{i}.{name}", tuple(lin.dense().shape), group_size)
    acts = calibration_inputs(model, calibration_ids, n_tokens=calib_tokens)
    out = quantize_linears(
        model, lambda i, name, w: gptq_weight(w, hessian(acts[(i, name)]), group_size, damp=damp,
                                              act_order=act_order, name=f"layers.{i}.{name}"),
        method="gptq" + ("-act-order" if act_order else ""), group_size=group_size,
        quantize_lm_head=quantize_lm_head, progress="GPTQ")
    return out
