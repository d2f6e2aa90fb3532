"""INT4 weights: group-wise asymmetric codes, our packed layout, and AutoAWQ's GEMM checkpoint format.

A weight ``W [out, in]`` is cut along ``in`` into groups of ``group_size`` (128) columns. Each (row, group)
has a scale ``s`` and an integer zero-point ``z`` in [0, 15]; a weight is stored as the code
``q = clamp(round(w / s) + z, 0, 15)`` and read back as ``(q - z) · s``. The range of every group includes 0
(min ≤ 0 ≤ max, as GPTQ's quantizer does), so the zero-point never clamps and every weight in the
group's range is within ``s / 2`` of its dequantized value.

Our layout (``QuantizedWeight``), chosen so a row of the output is one contiguous run of memory:

==============  ===========================  ===============================================================
field           shape, dtype                 meaning
==============  ===========================  ===============================================================
``qweight``     [out, in / 8] int32          word ``k`` of row ``o``: bits ``4j..4j+3`` hold the code of
                                             column ``8k + j`` (j = 0..7, sequential, least significant first)
``scales``      [out, in / group] fp16       one scale per (row, group)
``zeros``       [out, in / group] uint8      one zero-point per (row, group), 0..15
==============  ===========================  ===============================================================

Memory: 0.5 byte per weight + 3 bytes per 128 weights (≈ 0.52 B/weight, 3.8× smaller than bf16).

AutoAWQ's GEMM format (``WQLinear_GEMM``), transposed and interleaved:

- ``qweight [in, out / 8] int32``: word ``c`` of input row ``i`` holds output columns ``8c .. 8c+7``;
  nibble ``j`` (bits ``4j..4j+3``) holds column ``8c + AWQ_ORDER[j]`` with
  ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`` (the order its CUDA kernel's dequantisation produces pairs of fp16
  in);
- ``qzeros [in / group, out / 8] int32``: the zero-points packed the same way;
- ``scales [in / group, out] fp16``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError

GROUP_SIZE = 128
BITS = 4
PACK = 32 // BITS  # codes per int32
QMAX = 2 ** BITS - 1
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j holds column AWQ_ORDER[j] of its 8
SHIFTS = torch.arange(0, 32, BITS, dtype=torch.int64)


@dataclass
class QuantizedWeight:
    """One INT4 matrix in our layout (module docstring)."""

    qweight: torch.Tensor  # [out, in / 8] int32
    scales: torch.Tensor  # [out, in / group] fp16
    zeros: torch.Tensor  # [out, in / group] uint8
    group_size: int = GROUP_SIZE

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * PACK

    def codes(self) -> torch.Tensor:
        """``[out, in]`` uint8 codes."""
        return unpack_int4(self.qweight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes(), self.scales, self.zeros, self.group_size, dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))


def check_divisible(name: str, shape: tuple[int, ...], group_size: int) -> None:
    """One clear error when a matrix cannot be cut into whole groups or packed 8 per int32."""
    if len(shape) != 2:
        raise ModelError(f"{name}: INT4 quantization expects a 2-D weight [out, in], got shape {tuple(shape)}")
    out, inp = shape
    if group_size <= 0 or group_size % PACK or inp % group_size:
        raise ModelError(f"{name}: in_features {inp} is not a multiple of the group size {group_size} "
                         f"(and the group size must be a multiple of {PACK}): choose a group size that divides it "
                         "or leave this layer unquantized")


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``[rows, n]`` codes in 0..15 -> ``[rows, n / 8]`` int32, 8 consecutive columns per word (LSB first)."""
    rows, n = codes.shape
    if n % PACK:
        raise ModelError(f"cannot pack {n} columns 8 per int32: the column count must be a multiple of 8")
    c = codes.to(torch.int64).view(rows, n // PACK, PACK)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > QMAX):
        raise ModelError(f"INT4 codes must lie in 0..{QMAX}, got {int(c.min())}..{int(c.max())}")
    words = (c << SHIFTS.to(c.device)).sum(-1)  # disjoint bits: the sum is the OR
    return _to_int32(words)


def unpack_int4(words: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4``: ``[rows, k]`` int32 -> ``[rows, 8k]`` uint8."""
    w = words.to(torch.int64) & 0xFFFFFFFF  # the unsigned 32-bit pattern
    nib = (w.unsqueeze(-1) >> SHIFTS.to(w.device)) & QMAX
    return nib.reshape(words.shape[0], -1).to(torch.uint8)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Values in [0, 2³²) -> the int32 with the same bit pattern (two's complement)."""
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(q - z) · s`` per group: codes ``[out, in]``, scales/zeros ``[out, in / group]`` -> ``[out, in]``."""
    out, inp = codes.shape
    q = codes.to(torch.float32).view(out, inp // group_size, group_size)
    w = (q - zeros.to(torch.float32).unsqueeze(-1)) * scales.to(torch.float32).unsqueeze(-1)
    return w.reshape(out, inp).to(dtype)


def group_params(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> tuple:
    """Scale (fp16) and zero-point (uint8) per (row, group) of ``w [out, in]`` from its min and max.

    ``clip [out, in / group]`` (≤ 1, AWQ's clipping search) clamps each group to ``±clip · max|w|`` first, as
    AutoAWQ does: only the side(s) reaching beyond that bound shrink. The scale is rounded *up* to fp16, so
    the range still fits in 16 codes after the rounding.
    """
    out, inp = w.shape
    g = w.float().view(out, inp // group_size, group_size)
    lo, hi = g.amin(-1).clamp(max=0.0), g.amax(-1).clamp(min=0.0)
    if clip is not None:
        bound = torch.maximum(-lo, hi) * clip
        lo, hi = torch.maximum(lo, -bound), torch.minimum(hi, bound)
    scale = ((hi - lo) / QMAX).clamp(min=1e-5) * (1 + 2 ** -10)
    scale = scale.to(torch.float16)
    zero = torch.round(-lo / scale.float()).clamp(0, QMAX).to(torch.uint8)
    return scale, zero


def quantize_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   group_size: int) -> torch.Tensor:
    """Codes ``[out, in]`` uint8 of ``w`` under given group scales/zero-points (round to nearest, clamp)."""
    out, inp = w.shape
    g = w.float().view(out, inp // group_size, group_size)
    q = torch.round(g / scales.float().unsqueeze(-1)) + zeros.float().unsqueeze(-1)
    return q.clamp(0, QMAX).to(torch.uint8).view(out, inp)


def from_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               group_size: int = GROUP_SIZE) -> QuantizedWeight:
    return QuantizedWeight(pack_int4(codes), scales.to(torch.float16).contiguous(),
                           zeros.to(torch.uint8).contiguous(), group_size)


# ---------------------------------------------------------------------------------------- AutoAWQ GEMM format
def _pack_awq(codes_t: torch.Tensor) -> torch.Tensor:
    """``[rows, n]`` codes (rows = input features or groups) -> ``[rows, n / 8]`` int32 in AWQ's order."""
    rows, n = codes_t.shape
    # nibble j <- column ORDER[j]
    c = codes_t.to(torch.int64).view(rows, n // PACK, PACK)[..., list(AWQ_ORDER)]
    return _to_int32((c << SHIFTS.to(c.device)).sum(-1))


def _unpack_awq(words: torch.Tensor) -> torch.Tensor:
    nib = unpack_int4(words).view(words.shape[0], -1, PACK)  # nib[..., j] = column ORDER[j]
    cols = torch.empty_like(nib)
    cols[..., list(AWQ_ORDER)] = nib
    return cols.reshape(words.shape[0], -1)


def to_awq_gemm(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """Our layout -> AutoAWQ ``{"qweight", "qzeros", "scales"}`` (same numbers, transposed and
    interleaved)."""
    out, inp = qw.shape
    if out % PACK:
        raise ModelError(f"AutoAWQ's GEMM format packs output features 8 per int32: out_features {out} is not a multiple of 8")
    return {"qweight": _pack_awq(qw.codes().t().contiguous()),
            "qzeros": _pack_awq(qw.zeros.t().contiguous()),
            "scales": qw.scales.t().contiguous().to(torch.float16)}


def from_awq_gemm(name: str, tensors: dict[str, torch.Tensor],
                  group_size: int = GROUP_SIZE) -> QuantizedWeight:
    """AutoAWQ ``qweight/qzeros/scales`` of the linear ``name`` -> our layout; one clear error per
    mismatch."""
    for key in ("qweight", "qzeros", "scales"):
        if key not in tensors:
            raise ModelError(f"{name}.{key} is missing: an AutoAWQ GEMM checkpoint stores qweight, qzeros and scales")
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ModelError(f"{name}.qweight/qzeros are {qweight.dtype}/{qzeros.dtype}: expected int32 words of 8 "
                         "4-bit codes (AutoAWQ GEMM, w_bit=4)")
    if qweight.dim() != 2 or scales.dim() != 2:
        raise ModelError(f"{name}: expected 2-D qweight and scales, got {tuple(qweight.shape)} and {tuple(scales.shape)}")
    inp, out = qweight.shape[0], scales.shape[1]
    if not torch.isfinite(scales).all():
        raise ModelError(f"{name}.scales holds NaN or Inf: the checkpoint is corrupt; re-quantize or "
                         "re-download it")
    if qweight.shape[1] * PACK != out:
        bits = 32 * qweight.shape[1] // out if out else "?"
        raise ModelError(f"{name}.qweight has shape {tuple(qweight.shape)} but scales imply {out} output features: "
                         f"expected [{inp}, {out // PACK}] (4 bits per weight; this looks like {bits}-bit or another format)")
    if group_size <= 0 or inp % group_size or scales.shape[0] != inp // group_size:
        raise ModelError(f"{name}.scales has {scales.shape[0]} groups for {inp} input features: expected "
                         f"{inp}/{group_size} (q_group_size {group_size}); pass the checkpoint's group size")
    if tuple(qzeros.shape) != (inp // group_size, out // PACK):
        raise ModelError(f"{name}.qzeros has shape {tuple(qzeros.shape)}: expected {(inp // group_size, out // PACK)}")
    codes = _unpack_awq(qweight).t().contiguous()
    zeros = _unpack_awq(qzeros).t().contiguous()
    return from_codes(codes, scales.t().contiguous(), zeros, group_size)
