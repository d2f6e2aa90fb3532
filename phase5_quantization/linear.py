"""``QuantLinear`` (INT4) and ``DenseLinear`` (float): one call for a projection, whatever its weights.

Both take the fusions the decode step wants (``norm_weight``/``eps``: RMSNorm the input first; ``residual``:
add it, ``out=residual`` for in place; ``swiglu``: the matrix is ``[gate; up]`` and the result
``silu(gate) · up``), so the engine's step is written once.

``QuantLinear`` on a CUDA tensor runs the Triton W4A16 kernel (``kernels``): the codes are repacked into the
kernel layout on first use on that device and cached. ``release_storage()`` then drops the storage codes
(``Int4Engine`` does, so the weight exists once in memory; the row layout already shares storage's scales
and zero-points): ``qw`` is rebuilt from the kernel layout when something asks for it (saving, the fallback).
Elsewhere (a CPU, or a group size other than 128) it dequantizes the whole matrix and calls ``F.linear``:
correct, and slower than the float matrix (it reads 4-bit codes *and* writes a float copy).
``use_kernel=True`` forces the kernel (the CPU tests do, under ``TRITON_INTERPRET=1``); ``False`` forces the
fallback.

``take_rows``/``take_cols`` cut a layer for tensor parallelism (phase 6): output rows for a column-parallel
shard, input columns for a row-parallel one — whole groups only, so every group keeps its scale and zero-point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase0_prototype.errors import ModelError
from phase0_prototype.model import rms_norm
from phase0_prototype.model import swiglu as swiglu_fn
from phase5_quantization.packing import PACK, QuantizedWeight


def unfused(y_fn, x: torch.Tensor, norm_weight, eps, residual, swiglu, out) -> torch.Tensor:
    """The fusions in plain PyTorch, with the kernels' roundings (projection in the activation dtype)."""
    h = rms_norm(x, norm_weight, eps) if norm_weight is not None else x
    y = y_fn(h)
    if swiglu:
        y = swiglu_fn(*y.chunk(2, dim=-1))
    if residual is not None:
        y = residual + y
    if out is not None:
        out.copy_(y)
        return out
    return y


class DenseLinear:
    """A float matrix ``[out, in]`` behind the same call as ``QuantLinear``."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                 residual: torch.Tensor | None = None, swiglu: bool = False,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        if x.is_cuda and x.dim() == 2 and x.shape[0] <= 8 and self.weight.dtype == x.dtype and self.weight.is_cuda:
            from phase0_prototype.kernels.gemv import fused_gemv  # phase 0's bandwidth-bound GEMV (lm_head)

            return fused_gemv(x, self.weight, norm_weight=norm_weight, eps=eps, residual=residual, swiglu=swiglu, out=out)
        return unfused(lambda h: F.linear(h, self.weight.to(h.dtype)), x, norm_weight, eps, residual, swiglu, out)

    def dense(self) -> torch.Tensor:
        return self.weight

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def take_rows(self, index: torch.Tensor) -> "DenseLinear":
        """The output rows ``index`` (a column-parallel shard)."""
        return DenseLinear(self.weight[torch.as_tensor(index, device=self.weight.device)])

    def take_cols(self, start: int, end: int) -> "DenseLinear":
        """The input columns ``[start, end)`` (a row-parallel shard)."""
        return DenseLinear(self.weight[:, start:end].contiguous())

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def to(self, device=None, dtype=None) -> "DenseLinear":
        return DenseLinear(self.weight.to(device=device, dtype=dtype))


class QuantLinear:
    """``y = x · dequant(W)ᵀ`` with W stored as INT4 (``packing.QuantizedWeight``)."""

    def __init__(self, qw: QuantizedWeight, use_kernel: bool | None = None):
        self._qw: QuantizedWeight | None = qw
        self.group_size = qw.group_size
        self.shape = qw.shape  # (out_features, in_features)
        self.use_kernel = use_kernel
        self._kernel: dict[torch.device, object] = {}  # device -> kernels.layout.KernelWeight

    @property
    def qw(self) -> QuantizedWeight:
        """The storage layout (rebuilt from the kernel layout, not cached, after ``release_storage``)."""
        if self._qw is None:
            from phase5_quantization.kernels.layout import from_kernel_layout

            return from_kernel_layout(next(iter(self._kernel.values())))
        return self._qw

    def release_storage(self) -> None:
        """Keep only the kernel layout (built before on some device): the codes are no longer held twice."""
        if not self._kernel:
            raise ValueError("release_storage() before kernel_weight(device): the codes would be lost")
        self._qw = None

    def kernel_weight(self, device: torch.device | str):
        """The codes in the kernel layout on ``device`` (repacked once, then cached)."""
        from phase5_quantization.kernels.layout import to_kernel_layout

        device = torch.device(device)
        if device not in self._kernel:
            self._kernel[device] = to_kernel_layout(self.qw, device)  # the kernels' row layout (kernels.layout)
        return self._kernel[device]

    def runs_kernel(self, x: torch.Tensor) -> bool:
        if self.use_kernel is not None:
            return self.use_kernel
        return x.is_cuda and self.group_size == 128

    def __call__(self, x: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                 residual: torch.Tensor | None = None, swiglu: bool = False,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        if self.runs_kernel(x):
            from phase5_quantization.kernels import w4a16_linear

            return w4a16_linear(x, self.kernel_weight(x.device), norm_weight=norm_weight, eps=eps, residual=residual,
                                swiglu=swiglu, out=out)
        return unfused(lambda h: F.linear(h, self.qw.dequantize(h.dtype).to(h.device)), x, norm_weight, eps,
                        residual, swiglu, out)

    def dense(self) -> torch.Tensor:
        return self.qw.dequantize(torch.float32)

    def take_rows(self, index: torch.Tensor) -> "QuantLinear":
        """The output rows ``index`` (a column-parallel shard): their codes, scales and zero-points."""
        qw = self.qw
        index = torch.as_tensor(index, device=qw.qweight.device)
        return self._holding(QuantizedWeight(qw.qweight[index], qw.scales[index], qw.zeros[index], qw.group_size))

    def take_cols(self, start: int, end: int) -> "QuantLinear":
        """The input columns ``[start, end)`` (a row-parallel shard): whole groups only."""
        g = self.group_size
        if start % g or end % g:
            raise ModelError(f"INT4 input columns [{start}, {end}) split groups of {g}: a shard must hold whole "
                             "groups; choose --quant-group-size and --tp so that in_features / tp is a multiple "
                             "of the group size")
        qw = self.qw
        return self._holding(QuantizedWeight(qw.qweight[:, start // PACK:end // PACK].contiguous(),
                                             qw.scales[:, start // g:end // g].contiguous(),
                                             qw.zeros[:, start // g:end // g].contiguous(), g))

    def _holding(self, qw: QuantizedWeight) -> "QuantLinear":
        """A layer over ``qw`` held as this one is: in the kernel layout alone if this one released its storage."""
        out = QuantLinear(qw, self.use_kernel)
        if self._qw is None:
            for device in self._kernel:
                out.kernel_weight(device)
            out.release_storage()
        return out

    def nbytes(self) -> int:
        if self._qw is None:
            return next(iter(self._kernel.values())).nbytes()
        return self._qw.nbytes()

    def to(self, device=None, dtype=None) -> "QuantLinear":
        """The codes on ``device`` (``dtype`` applies to activations, not to INT4 weights: ignored)."""
        if self._qw is None and (device is None or torch.device(device) in self._kernel):
            out = QuantLinear.__new__(QuantLinear)  # storage released: the kernel layout is all there is
            out._qw, out.group_size, out.shape, out.use_kernel = None, self.group_size, self.shape, self.use_kernel
            out._kernel = dict(self._kernel)
            return out
        qw = self.qw
        if device is not None:
            qw = QuantizedWeight(qw.qweight.to(device), qw.scales.to(device), qw.zeros.to(device), qw.group_size)
        out = QuantLinear(qw, self.use_kernel)
        out._kernel = dict(self._kernel)
        return out
