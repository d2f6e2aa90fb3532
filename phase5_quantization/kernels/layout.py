"""The kernels' INT4 layouts: the codes of a word 16 input features apart, rows (``row_major``, the default)
or output features (``col``) contiguous.

Storage (``packing.QuantizedWeight``, what checkpoints hold) keeps a row of ``W [N, K]`` together:
``qweight [N, K/8]``, word ``(n, w)`` = codes of ``(n, 8w .. 8w+7)``. The kernels read ``KernelWeight`` instead
(repacked once, when a ``QuantLinear`` first meets a CUDA device or the Triton interpreter), in one of two
orientations. First the original one, ``col`` (the GPTQ-style ``[K/8, N]``; the row layout below is the
default):

==============  ==========================  =================================================================
field           shape, dtype                meaning
==============  ==========================  =================================================================
``qweight``     [K / 8, N] int32            word ``(16g + w, n)``, bits ``4j..4j+3``: code of input feature
                                            ``k = 128g + 16j + w`` of output ``n`` (g: group, w = 0..15, j = 0..7)
``scales``      [K / 128, N] fp16           scale of (group, n)
``zeros``       [K / 128, N] uint8          zero-point of (group, n)
==============  ==========================  =================================================================

Why this arrangement:

- **Coalesced, wide loads**: consecutive ``n`` are consecutive words, so a warp's load of a word-row is
  contiguous (16-byte vectors per thread) and the activation a word multiplies is the same for the whole
  warp (a broadcast). It is GPTQ's ``[K/8, N]`` orientation.
- **Nibble j of the 16 words of a group = 16 consecutive input features** ``128g + 16j .. 128g + 16j + 15``:
  the tensor-core kernel turns nibble ``j`` of a ``[16, BLOCK_N]`` word tile into the ``[16, BLOCK_N]``
  operand of one ``k = 16`` MMA step against 16 *contiguous* activation columns — no shuffle of codes or
  activations, no reshape in registers.
- **Codes extracted in place**: nibble ``j`` is masked where it lies and OR-ed into a float's exponent
  (``w4a16._code``): one logical op + one subtract per weight, no int→float conversion.

**The row layout** (``row_major=True``, what ``to_kernel_layout`` builds unless ``layout="col"`` or
``TITANINFER_W4A16_LAYOUT=col``): the same words transposed, so each output row's codes are contiguous along K,
and scales/zero-points in storage's ``[N, K/128]`` orientation (the storage tensors themselves when they are
already on the device: only ``qweight`` is rewritten):

==============  ==========================  =================================================================
field           shape, dtype                meaning
==============  ==========================  =================================================================
``qweight``     [N, K / 8] int32            word ``(n, 16g + w)``, bits ``4j..4j+3``: code of feature
                                            ``k = 128g + 16j + w`` of output ``n``
``scales``      [N, K / 128] fp16           scale of (n, group)
``zeros``       [N, K / 128] uint8          zero-point of (n, group)
==============  ==========================  =================================================================

The decode GEMV (``w4a16_rows``) wants it: a program streams whole rows in wide loads (phase 0's bf16 GEMV
design), and nibble ``j`` of 4 consecutive words still multiplies 4 consecutive activations (one vector
load). The tensor-core kernel reads it too (``[16 words, BLOCK_N]`` tiles, 64 contiguous bytes per row), so
one layout serves every ``M`` and the weight exists once in memory. ``col`` keeps the original
``[K/8, N]`` orientation and its GEMV, for A/B comparisons.

Bytes: 0.5 per weight + 3 per 128 weights (the same as storage). AutoAWQ's GEMM layout (``[K, N/8]``, packed
along N, interleaved) suits CUDA kernels that dequantize straight into MMA fragments with PTX tricks
Triton does not expose; ``packing.from_awq_gemm`` imports it into storage and this repack takes it from there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.packing import PACK, QuantizedWeight, pack_int4, unpack_int4

KERNEL_GROUP = 128  # the layout's nibble stride assumes groups of 128 input features
WORDS_PER_GROUP = KERNEL_GROUP // PACK
LAYOUTS = ("row", "col")


def default_layout() -> str:
    """``TITANINFER_W4A16_LAYOUT`` (``row``, the default, or ``col``: the original ``[K/8, N]`` layout and GEMV)."""
    layout = os.environ.get("TITANINFER_W4A16_LAYOUT", "row").strip().lower() or "row"
    if layout not in LAYOUTS:
        raise ModelError(f"TITANINFER_W4A16_LAYOUT={layout!r}: choose row (the row GEMV) or col (the [K/8, N] one)")
    return layout


@dataclass
class KernelWeight:
    """One INT4 matrix in a kernel layout (module docstring): ``y = x · Wᵀ`` with ``W [n, k]``."""

    qweight: torch.Tensor  # [K / 8, N] int32 ([N, K / 8] when row_major)
    scales: torch.Tensor  # [K / 128, N] fp16 ([N, K / 128])
    zeros: torch.Tensor  # [K / 128, N] uint8 ([N, K / 128])
    group_size: int = KERNEL_GROUP
    row_major: bool = False

    @property
    def n(self) -> int:
        return self.qweight.shape[0 if self.row_major else 1]

    @property
    def k(self) -> int:
        return self.qweight.shape[1 if self.row_major else 0] * PACK

    def strides(self) -> tuple[int, int, int, int]:
        """Element strides of ``qweight`` along (word-rows, features), then of ``scales``/``zeros`` (the GEMM reads
        either layout through them)."""
        (wk, wn), (sk, sn) = self.qweight.stride(), self.scales.stride()
        return (wn, wk, sn, sk) if self.row_major else (wk, wn, sk, sn)

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))


def _strided_order(k: int) -> torch.Tensor:
    """Column order that puts code ``j`` of word ``w`` of group ``g`` at position ``8(16g + w) + j``: feature
    ``128g + 16j + w``."""
    g, w, j = torch.meshgrid(torch.arange(k // KERNEL_GROUP), torch.arange(WORDS_PER_GROUP), torch.arange(PACK),
                             indexing="ij")
    return (g * KERNEL_GROUP + j * WORDS_PER_GROUP + w).reshape(-1)


def to_kernel_layout(qw: QuantizedWeight, device: torch.device | str | None = None, name: str = "weight",
                     layout: str | None = None) -> KernelWeight:
    """Storage layout -> kernel layout (on ``device``, default the weight's own); ``layout`` ``row`` or ``col``
    (default ``default_layout()``)."""
    layout = layout or default_layout()
    if layout not in LAYOUTS:
        raise ModelError(f"{name}: unknown W4A16 layout {layout!r}: choose row or col")
    if qw.group_size != KERNEL_GROUP:
        raise ModelError(f"{name}: the W4A16 kernel takes groups of {KERNEL_GROUP} input features, this weight has "
                         f"groups of {qw.group_size}; requantize with group_size={KERNEL_GROUP} (QuantLinear falls back "
                         "to dequantize + F.linear for other group sizes)")
    dev = torch.device(device) if device is not None else qw.qweight.device
    codes = unpack_int4(qw.qweight.to(dev))  # [N, K]
    order = _strided_order(codes.shape[1]).to(dev)
    words = pack_int4(codes[:, order])  # [N, K/8], word (n, 16g + w) in the strided order
    if layout == "row":  # scales/zeros as stored: no copy when already on the device in the right dtype
        return KernelWeight(words.contiguous(), qw.scales.to(dev, torch.float16).contiguous(),
                            qw.zeros.to(dev, torch.uint8).contiguous(), KERNEL_GROUP, row_major=True)
    return KernelWeight(words.t().contiguous(), qw.scales.to(dev, torch.float16).t().contiguous(),
                        qw.zeros.to(dev, torch.uint8).t().contiguous(), KERNEL_GROUP)


def from_kernel_layout(kw: KernelWeight) -> QuantizedWeight:
    """Kernel layout (either) -> storage layout (the inverse permutation)."""
    t = (lambda a: a) if kw.row_major else (lambda a: a.t())  # noqa: E731 - to [N, ...]
    codes_perm = unpack_int4(t(kw.qweight).contiguous())  # [N, K] in the strided order
    order = _strided_order(codes_perm.shape[1]).to(codes_perm.device)
    codes = torch.empty_like(codes_perm)
    codes[:, order] = codes_perm
    return QuantizedWeight(pack_int4(codes), t(kw.scales).contiguous(), t(kw.zeros).contiguous(), kw.group_size)
