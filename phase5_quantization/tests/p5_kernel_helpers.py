"""What the W4A16 kernel tests share: a quantized random matrix (with an outlier column) in a kernel layout
and its float64 dequantization, fresh activations, and RMSNorm in float64."""

import torch

from phase5_quantization.framework import quantize_weight
from phase5_quantization.kernels.layout import to_kernel_layout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def weight(n, k, seed, layout="row"):
    """``(storage, kernel layout on DEVICE, float64 dequantized)`` of a random ``[n, k]`` matrix."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 5] *= 8  # an outlier column: its groups get wide ranges and small codes elsewhere
    qw = quantize_weight(w, 128)
    return qw, to_kernel_layout(qw, DEVICE, layout=layout), qw.dequantize(torch.float64).to(DEVICE)


def act(m, k, seed, dtype=torch.float32):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def rms(x, g, eps=1e-5):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.double()
