"""The kernels' INT4 layout (``KernelWeight``): the codes of a word 16 input features apart, each output row's
words contiguous along K; repacked once from storage (``packing.QuantizedWeight``) when a ``QuantLinear``
first meets a CUDA device or the Triton interpreter.

==============  ====================  ===========================================================
field           shape, dtype          meaning
==============  ====================  ===========================================================
``qweight``     [N, K / 8] int32      word ``(n, 16g + w)``, bits ``4j..4j+3``: code of feature
                                      ``k = 128g + 16j + w`` of output ``n`` (group g, w < 16, j < 8)
``scales``      [N, K / 128] fp16     scale of (n, group); storage's own tensor when on the device
``zeros``       [N, K / 128] uint8    zero-point of (n, group); likewise
==============  ====================  ===========================================================

Why: the decode GEMV (``w4a16_rows``) streams whole rows in wide loads (phase 0's bf16 GEMV design), and
nibble ``j`` of 4 consecutive words multiplies 4 consecutive activations (one vector load); the tensor-core
kernels take nibble ``j`` of a group's 16 words as the operand of one k = 16 MMA step against 16 *contiguous*
activations (no shuffle). One layout serves every ``M``, so the weight exists once in memory; 0.5 byte per
weight + 3 bytes per 128, as storage. ``layout="col"`` builds the transposed ``[K/8, N]`` orientation (GPTQ's,
with ``[K/128, N]`` scales and zero-points): the ``[K/8, N]`` GEMV's, compared against by the GPU sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.packing import PACK, QuantizedWeight, pack_int4, unpack_int4

KERNEL_GROUP = 128  # the layout's nibble stride assumes groups of 128 input features
WORDS_PER_GROUP = KERNEL_GROUP // PACK
LAYOUTS = ("row", "col")


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
        """Element strides of ``qweight`` along (word-rows, features), then of ``scales``/``zeros`` (the GEMM
        reads either layout through them)."""
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
    g, w, j = torch.meshgrid(torch.arange(k // KERNEL_GROUP), torch.arange(WORDS_PER_GROUP),
                             torch.arange(PACK), indexing="ij")
    return (g * KERNEL_GROUP + j * WORDS_PER_GROUP + w).reshape(-1)


def to_kernel_layout(qw: QuantizedWeight, device: torch.device | str | None = None, name: str = "weight",
                     layout: str = "row") -> KernelWeight:
    """Storage layout -> kernel layout (on ``device``, default the weight's own): ``row`` (the kernels'
    layout, module docstring) or ``col`` (the ``[K/8, N]`` one)."""
    if layout not in LAYOUTS:
        raise ModelError(f"{name}: unknown W4A16 layout {layout!r}: choose row or col")
    if qw.group_size != KERNEL_GROUP:
        raise ModelError(f"{name}: the W4A16 kernel takes groups of {KERNEL_GROUP} input features, this weight "
                         f"has groups of {qw.group_size}; requantize with group_size={KERNEL_GROUP} (QuantLinear "
                         "falls back to dequantize + F.linear for other group sizes)")
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
    return QuantizedWeight(pack_int4(codes), t(kw.scales).contiguous(), t(kw.zeros).contiguous(),
                           kw.group_size)
